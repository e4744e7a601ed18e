"""Reliability (#20): what an operator sees when the registry is down, and whether runs survive membership changes.

    .venv/bin/python bench/reliability.py                 # both parts, writes reliability.json + summary keys
    .venv/bin/python bench/reliability.py --registry-down # the command battery only (about a minute)

1. Registry down: every `dbserver`/`dbaudit` command that talks to the registry (`dbclient` never does) runs
   against a provisioned server home whose registry is stopped. Each must exit 2 with one line naming the URL;
   `reliability.tracebacks_registry_down` counts outputs with a Python traceback, `reliability.token_leaks`
   counts outputs holding a token prefix (`dbk_`), both over every command (the server's own tokens are on disk).
2. Membership: the real-process test `tests/federation/test_processes.py::test_membership_changes` (a company
   joins mid-run, one leaves between rounds, one mid-round) writes what it saw to $DBLOCKS_RELIABILITY_OUT:
   `reliability.membership_changes_survived` and `reliability.runs_failed`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
TOKEN = re.compile(r"dbk_[A-Za-z0-9_-]{4,}")


def provision(base: Path) -> tuple[Path, str, dict[str, str]]:
    """A server home (`dbserver init`) whose registry is never started; returns (home, registry URL, env)."""
    from dblocks.shared.procs import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("DBLOCKS_")}
    env["DBLOCKS_HOME"] = str(base)
    home = base / "server"
    reg, gw, link = free_port(), free_port(), free_port()
    cmd = [str(BIN / "dbserver"), "init", "--host", "localhost", "--home", str(home)]
    cmd += ["--registry-port", str(reg), "--gateway-port", str(gw), "--superlink-port", str(link)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=120)
    (home / "flwr").mkdir(exist_ok=True)
    (home / "flwr" / "config.toml").touch()  # as after `dbserver start`: `run new` goes on to the registry
    return home, f"http://127.0.0.1:{reg}", env


def registry_down_commands(home: Path, url: str) -> dict[str, list[str]]:
    key = home.parent / "company.key.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr3cDxp3a3S6xaKjyTkPAPFUjN5VlU6Yr0d3W1jA0yf company\n")
    h = ["--home", str(home)]
    token = (home / "secrets" / "admin.token").read_text().strip()  # a real token: any leak is caught
    audit = ["--block-version", "1", "--registry", url, "--token", token]
    return {
        "dbserver nodes list": ["dbserver", "nodes", "list", *h],
        "dbserver nodes approve": ["dbserver", "nodes", "approve", str(key), *h],
        "dbserver nodes revoke": ["dbserver", "nodes", "revoke", "node-1", *h],
        "dbserver run new": ["dbserver", "run", "new", "--task", "digits", "--num-blocks", "2", *h],
        "dbaudit run --registry": ["dbaudit", "run", "--attack", "closed-form", "--observe", "raw", *audit],
        "dbaudit suite --registry": ["dbaudit", "suite", "--out", str(home.parent / "audits"), *audit],
    }


def run_registry_down(base: Path) -> dict:
    home, url, env = provision(base)
    rows = {}
    for name, cmd in registry_down_commands(home, url).items():
        r = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True, timeout=180)
        out = r.stdout + r.stderr
        lines = [x for x in out.splitlines() if x.strip()]
        rows[name] = {
            "exit": r.returncode,
            "lines": len(lines),
            "names_url": url in out,
            "traceback": "Traceback" in out,
            "token_leak": bool(TOKEN.search(out)),
            "output": out[-400:],
        }
    return {
        "url": url,
        "commands": rows,
        "tracebacks_registry_down": sum(r["traceback"] for r in rows.values()),
        "token_leaks": sum(r["token_leak"] for r in rows.values()),
    }


def run_membership(out: Path) -> dict:
    env = dict(os.environ, DBLOCKS_RELIABILITY_OUT=str(out), OMP_NUM_THREADS="1")
    test = "tests/federation/test_processes.py::test_membership_changes"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", test], cwd=ROOT, env=env, text=True)
    if r.returncode != 0 or not out.exists():
        raise SystemExit(f"{test} failed (exit {r.returncode})")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry-down", action="store_true", help="only the registry-down command battery")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        down = run_registry_down(Path(d))
        member = None if args.registry_down else run_membership(Path(d) / "membership.json")
    result = {"registry_down": down, "membership": member}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reliability.json").write_text(json.dumps(result, indent=2) + "\n")
    keys = {
        "reliability.tracebacks_registry_down": down["tracebacks_registry_down"],
        "reliability.token_leaks": down["token_leaks"],
    }
    if member is not None:
        keys["reliability.membership_changes_survived"] = member["membership_changes_survived"]
        keys["reliability.runs_failed"] = member["runs_failed"]
    path = args.out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(keys)
    path.write_text(json.dumps(dict(sorted(summary.items())), indent=2) + "\n")  # as bench/_common.update_summary
    print(json.dumps(keys, indent=2))


if __name__ == "__main__":
    main()
