"""Across firewalls, for real: one server host and three company hosts in network namespaces.

The server host runs `dbserver init` + `dbserver start` (SuperLink on loopback, Fleet gateway on the host's
address, registry on loopback, node sync). Each company host's nftables firewall drops every inbound
connection; its SuperNodes (`dbclient join`, TLS + node key approved with `dbserver nodes approve`) connect
out to the gateway. Company host 0 runs two SuperNodes (two data sets), hosts 1 and 2 one each: 4 nodes,
B = 2 blocks with cohorts of 2 — with Flower's SecAgg+ (`--secagg flower`), which allows cohorts of 2; the
default dblocks SecAgg+ needs 3 per cohort, i.e. 6 SuperNodes here. Both travel over the same Flower messages
through the same gateway, which is what this test is about.

One federated round runs; as soon as the server has assigned the cohorts, company host 2's network is
pulled. The run must finish: the block without host 2 is trained and registered, host 2's block is skipped
with the reason recorded (its cohort cannot re-run with one member). Also checked: a company host cannot
reach the SuperLink's Control API or the registry, the firewall really drops inbound connections, and a node
whose key nobody approved is refused. The outcome goes to bench/results/summary.json (deploy.netns_run_ok).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dblocks.server.ops.procs import spawn, stop_group

from .netns import SERVER_IP, Topology, unavailable_reason
from .summary import record

BIN = Path(sys.executable).parent
NODES = [(0, "acme-a"), (0, "acme-b"), (1, "globex"), (2, "initech")]  # (company host, node name)
PULLED_HOST = 2
RUN = [
    "--task",
    "digits",
    "--num-blocks",
    "2",
    "--num-rounds",
    "1",
    "--cohort-size",
    "2",
    "--min-cohort",
    "2",
    "--secagg",
    "flower",
    "--record-steps",
    "4",
    "--record-sample-rate",
    "0.1",
    "--record-noise",
    "1.0",
    "--update-clip",
    "0.5",
    "--lr",
    "1e-3",
]

REASON = unavailable_reason()
if REASON:
    record({"deploy.netns_run_ok": False, "deploy.netns_run_reason": f"skipped: {REASON}"})
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=f"network namespace test: {REASON}")]


def company_data(root: Path) -> list[Path]:
    from dblocks.server.ops.localfed import split_public_private
    from dblocks.shared.data import partition_dirichlet, save_npz

    _, private, _ = split_public_private("digits", 100)
    parts = partition_dirichlet(private.y.numpy(), len(NODES), 5.0, seed=0, min_size=100)
    paths = []
    for (_host, name), idx in zip(NODES, parts):
        p = root / name / "data.npz"
        p.parent.mkdir(parents=True, exist_ok=True)
        save_npz(private.subset(idx), p)
        paths.append(p)
    return paths


class Hosts:
    """The topology plus the processes started in it; everything is stopped and deleted at the end."""

    def __init__(self, root: Path):
        self.root = root
        self.net = Topology(3).create()
        self.procs: dict[str, subprocess.Popen] = {}
        self.server_env = dict(os.environ, DBLOCKS_HOME=str(root / "server-host"))
        self.home = root / "server-host" / "server"

    def on_server(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run(
            self.net.exec(self.net.server, str(BIN / args[0]), *args[1:]),
            env=self.server_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise AssertionError(f"{' '.join(args[:3])} on the server host failed: {(r.stdout + r.stderr)[-2000:]}")
        return r.stdout

    def python_in(self, ns: str, code: str, timeout: float = 60) -> dict:
        r = subprocess.run(
            self.net.exec(ns, sys.executable, "-c", code),
            env=self.server_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise AssertionError(f"python in {ns} failed: {r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def start(self, name: str, ns: str, args: list[str], env: dict, log: Path) -> subprocess.Popen:
        self.procs[name] = spawn(self.net.exec(ns, *args), env=env, log=log)
        return self.procs[name]

    def close(self) -> None:
        """SIGTERM to every process group at once, then wait for each (SIGKILL after 20 s): the waits overlap."""
        procs = [self.procs.pop(name) for name in reversed(list(self.procs))]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            stop_group(p, timeout=20)
        self.net.destroy()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    h = Hosts(tmp_path_factory.mktemp("netns"))
    try:
        yield h
    finally:
        h.close()


def wait_for(pred, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_federated_round_across_firewalls(hosts):
    t0 = time.time()
    ok, reason = False, "the test did not get to the end"
    try:
        _scenario(hosts)
        ok, reason = (
            True,
            "a round with TLS and node keys across 3 firewalled company hosts finished; one host's network pulled "
            "mid-round was survived",
        )
    except BaseException as e:
        reason = f"{type(e).__name__}: {str(e)[:300]}"
        raise
    finally:
        record(
            {
                "deploy.netns_run_ok": ok,
                "deploy.netns_run_reason": reason,
                "deploy.netns_run_seconds": round(time.time() - t0, 1),
            }
        )


def _scenario(h: Hosts) -> None:
    net = h.net
    # ---- server host: provision and start ----------------------------------------------------------
    h.on_server("dbserver", "init", "--host", SERVER_IP)
    ca = h.home / "tls" / "ca.pem"
    h.start("server", net.server, [str(BIN / "dbserver"), "start"], h.server_env, h.root / "dbserver-start.log")
    wait_for(
        lambda: "companies need the CA" in _read(h.root / "dbserver-start.log") or h.procs["server"].poll() is not None,
        120,
        "dbserver start",
    )
    assert h.procs["server"].poll() is None, _read(h.root / "dbserver-start.log")

    # ---- company hosts: keys, approval, join ---------------------------------------------------------
    data = company_data(h.root / "companies")
    for (_host, name), _path in zip(NODES, data):
        home = h.root / "companies" / name
        subprocess.run(
            [str(BIN / "dbclient"), "keys", "init", "--path", str(home / "node.key")],
            check=True,
            capture_output=True,
            timeout=60,
        )
        from dblocks.privacy.secagg.flower import identity_public

        h.on_server(
            "dbserver",
            "nodes",
            "approve",
            str(home / "node.key.pub"),
            "--name",
            name,
            "--secagg-identity",
            identity_public(home / "secagg.key").hex(),
        )
    for (host, name), path in zip(NODES, data):
        home = h.root / "companies" / name
        h.start(
            name,
            net.company(host),
            [
                str(BIN / "dbclient"),
                "join",
                "--server",
                f"{SERVER_IP}:9092",
                "--ca",
                str(ca),
                "--directory-key",
                str(h.home / "tls" / "directory.pub"),
                "--key",
                str(home / "node.key"),
                "--data",
                str(path),
                "--epsilon-budget",
                "50",
                "--threads",
                "1",
                "--home",
                str(home),
            ],
            dict(os.environ, DBLOCKS_HOME=str(home)),
            home / "join.log",
        )
    node_ids = {
        name: wait_for(lambda n=name: _node_id(h.root / "companies" / n / "join.log"), 90, f"{name} to connect")
        for _, name in NODES
    }

    # ---- what a company host can and cannot reach ----------------------------------------------------
    probe = h.python_in(
        net.company(1),
        f"""
import json, socket, httpx
def refused(port):
    try:
        socket.create_connection(("{SERVER_IP}", port), timeout=3).close(); return False
    except OSError: return True
r = httpx.post("https://{SERVER_IP}:9092/v1/control/list-nodes", verify="{ca}", content=b"")
f = httpx.post("https://{SERVER_IP}:9092/v1/fleet/get-run", verify="{ca}", content=b"")
print(json.dumps({{"superlink_port_refused": refused(9091), "registry_refused": refused(8700),
                  "control_via_gateway": r.status_code, "fleet_via_gateway": f.status_code}}))
""",
    )
    assert probe["superlink_port_refused"] and probe["registry_refused"], probe
    assert probe["control_via_gateway"] == 404, probe
    assert probe["fleet_via_gateway"] not in (404, 503), probe  # reached the SuperLink (which rejects the empty body)

    # the company firewall drops inbound connections: a listener on company host 0 is unreachable from the server
    h.start(
        "listener",
        net.company(0),
        [
            sys.executable,
            "-c",
            "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 7777)); s.listen(); time.sleep(600)",
        ],
        dict(os.environ),
        h.root / "listener.log",
    )
    time.sleep(1.0)
    inbound = h.python_in(
        net.server,
        f"""
import json, socket
try:
    socket.create_connection(("{net.company_ip(0)}", 7777), timeout=3).close(); ok = True
except OSError as e: ok = False
print(json.dumps({{"connected": ok}}))""",
    )
    local = h.python_in(
        net.company(0),
        """
import json, socket
socket.create_connection(("127.0.0.1", 7777), timeout=3).close(); print(json.dumps({"connected": True}))""",
    )
    assert inbound == {"connected": False} and local == {"connected": True}
    stop_group(h.procs.pop("listener"))

    # a node whose key nobody approved is refused
    stranger = h.root / "companies" / "stranger"
    subprocess.run(
        [str(BIN / "dbclient"), "keys", "init", "--path", str(stranger / "node.key")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    p = h.start(
        "stranger",
        net.company(1),
        [
            str(BIN / "dbclient"),
            "join",
            "--server",
            f"{SERVER_IP}:9092",
            "--ca",
            str(ca),
            "--key",
            str(stranger / "node.key"),
            "--data",
            str(data[2]),
            "--home",
            str(stranger),
        ],
        dict(os.environ, DBLOCKS_HOME=str(stranger)),
        stranger / "join.log",
    )
    code = p.wait(timeout=90)
    h.procs.pop("stranger")
    assert code != 0 and "SuperNode ID" not in _read(stranger / "join.log"), _read(stranger / "join.log")[-1500:]

    # ---- one federated round; host 2's network is pulled once cohorts are assigned -----------------------
    run = h.start("run", net.server, [str(BIN / "dbserver"), "run", "new", *RUN], h.server_env, h.root / "run-new.log")
    log = wait_for(lambda: _serverapp_log(h.home), 120, "the ServerApp log")
    cohorts = wait_for(lambda: re.search(r"round 1: \d+ live nodes; cohorts (\{.*\})", _read(log)), 240, "cohorts")
    h.net.pull_network(PULLED_HOST)
    pulled_id = int(node_ids["initech"])
    code = run.wait(timeout=600)
    h.procs.pop("run")
    assert code == 0, _read(h.root / "run-new.log")[-3000:]
    plan = {int(b): [int(n) for n in members] for b, members in ast.literal_eval(cohorts.group(1)).items()}
    pulled_block = next(b for b, members in plan.items() if pulled_id in members)
    other_block = 1 - pulled_block
    rounds = h.python_in(
        net.server,
        f"""
import json
from pathlib import Path
from dblocks.shared.registry_client import RegistryClient
reg = RegistryClient("http://127.0.0.1:8700", Path("{h.home / "secrets" / "admin.token"}").read_text().strip())
run = reg.list_runs()[0]
print(json.dumps({{"status": run["status"], "rounds": reg.list_rounds(run["id"]),
                  "versions": reg.list_block_versions(run["id"])}}))""",
    )
    assert rounds["status"] == "finished", rounds["status"]
    by_block = {}
    for r in rounds["rounds"]:
        if r["status"] != "evaluated":  # the round-level report of the assembled model's accuracy
            by_block.setdefault(r["block_index"], []).append(r)
    assert [r["status"] for r in by_block[other_block]] == ["completed"], by_block
    final = by_block[pulled_block][-1]
    assert final["status"] == "skipped" and final["reason"], by_block[pulled_block]
    trained = [v for v in rounds["versions"] if v["round"] == 1]
    assert [v["block_index"] for v in trained] == [other_block]
    assert sorted(trained[0]["cohort"]) == sorted(str(n) for n in plan[other_block])


def _read(p: Path) -> str:
    return p.read_text(errors="replace") if p.exists() else ""


def _node_id(log: Path) -> str | None:
    m = re.search(r"SuperNode ID: (\d+)", _read(log))
    return m.group(1) if m else None


def _serverapp_log(home: Path) -> Path | None:
    logs = sorted((home / "runs").glob("*/serverapp.log"))
    return logs[-1] if logs else None
