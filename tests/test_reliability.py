"""#20: every refusal says why, on the side that can act on it, and never prints a token."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "reliability.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_reliability", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_registry_down_one_line_exit_2_no_traceback_no_token(tmp_path):
    """`dbserver nodes ...`, `run new`, `dbaudit run/suite --registry` with the registry stopped."""
    res = _bench().run_registry_down(tmp_path)
    for name, row in res["commands"].items():
        assert row["exit"] == 2 and row["lines"] == 1 and row["names_url"], (name, row["output"])
        assert not row["traceback"] and not row["token_leak"], (name, row["output"])
    assert res["tracebacks_registry_down"] == 0 and res["token_leaks"] == 0


def test_unreachable_registry_error_names_the_url_never_the_token():
    from dblocks.shared.registry_client import RegistryClient, RegistryError, RegistryUnreachable

    reg = RegistryClient("http://127.0.0.1:9", "dbk_secret_never_printed", connect_retries=0)
    with pytest.raises(RegistryUnreachable) as e:
        reg.whoami()
    assert isinstance(e.value, RegistryError)  # callers that catch RegistryError catch it too
    assert "http://127.0.0.1:9" in str(e.value) and "dbk_" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained httpx request in a traceback


def _company(tmp_path, budget: float = 100.0):
    """A small CSV data set and its ledger with one settled task (rdp-free: the ledger's default accountant)."""
    import numpy as np

    from dblocks.client.join import ledger_path
    from dblocks.client.ledger import PrivacyLedger
    from dblocks.privacy.accounting import MechanismStep

    rng = np.random.default_rng(0)
    data = tmp_path / "data.csv"
    rows = ["a,b,c,label"] + [
        f"{x[0]:.3f},{x[1]:.3f},{x[2]:.3f},{i % 2}" for i, x in enumerate(rng.normal(size=(40, 3)))
    ]
    data.write_text("\n".join(rows) + "\n")
    home = tmp_path / "home"
    path = ledger_path(home, data.resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    led = PrivacyLedger(path, budget)
    step = MechanismStep(1.0, 0.1, 20)
    led.settle(led.reserve("run", 1, 0, 0, step, 1e-5, 40))
    return data, home, led, step


def test_budget_refusals_say_spent_budget_and_cost(tmp_path):
    from typer.testing import CliRunner

    from dblocks.client.cli import app
    from dblocks.client.clientapp import say_if_unaffordable
    from dblocks.client.join import JoinOptions, budget_refusal

    data, home, led, step = _company(tmp_path)
    spent = led.spent()
    # the next task does not fit: one progress line with what is spent, what it would cost and the budget
    led.budget = spent + 0.01
    progress = tmp_path / "progress.log"
    ping = {"noise": step.noise_multiplier, "sample_rate": step.sample_rate, "steps": step.steps, "delta": 1e-5}
    line = say_if_unaffordable({"progress-path": str(progress)}, led, ping)
    assert line and line.startswith("skipped for budget") and f"spent {spent:.2f}" in line
    assert "would cost" in line and f"over the budget {led.budget:g}" in line
    assert progress.read_text().strip().endswith(line)  # after the time of day
    led.budget = 1000.0
    assert say_if_unaffordable({"progress-path": str(progress)}, led, ping) is None
    assert say_if_unaffordable({}, led, {"run_id": "1"}) is None  # an older server's ping names no mechanism
    # re-joining with a budget below what is already spent is refused at start, one line, exit 2
    opts = JoinOptions(server="x:1", data=data, home=home, insecure=True, epsilon_budget=spent / 2)
    assert "already spent" in budget_refusal(opts)
    assert budget_refusal(JoinOptions(server="x:1", data=data, home=home, insecure=True, epsilon_budget=50)) is None
    argv = ["join", "--server", "127.0.0.1:9", "--data", str(data), "--insecure", "--home", str(home)]
    r = CliRunner().invoke(app, [*argv, "--epsilon-budget", f"{spent / 2:g}"])
    assert r.exit_code == 2 and "already spent record-level epsilon" in r.output, r.output


class _Proc:
    """A child process stand-in: alive for `polls` polls (None: forever), then exited with 1."""

    def __init__(self, polls=None):
        self.polls, self.returncode = polls, None

    def poll(self):
        if self.polls is not None:
            self.polls -= 1
            if self.polls < 0:
                self.returncode = 1
        return self.returncode

    def send_signal(self, sig):
        self.returncode = 0

    def wait(self, timeout=None):
        return self.returncode


def test_dbserver_start_restarts_a_crashed_registry_and_keeps_the_superlink(monkeypatch, tmp_path):
    from types import SimpleNamespace as NS

    from rich.console import Console

    from dblocks.server.ops import nodesync, provision, stack

    spawned = []

    def spawn(cmd, env=None, log=None):
        spawned.append(cmd[1])
        return _Proc(polls=1 if cmd[1] == "registry" and spawned.count("registry") == 1 else None)

    superlink = _Proc(polls=12)  # the loop's end: about 6 s of supervision
    monkeypatch.setattr(stack, "spawn", spawn)
    monkeypatch.setattr(stack, "start_superlink", lambda *a, **k: superlink)
    monkeypatch.setattr(stack, "wait_for_port", lambda *a, **k: None)
    monkeypatch.setattr(stack, "read_secret", lambda p: "dbk_never_used")
    monkeypatch.setattr(provision, "ensure_directory_key", lambda home: None)
    monkeypatch.setattr(provision, "directory_publisher", lambda home: None)
    monkeypatch.setattr(nodesync, "NodeSyncLoop", lambda *a: NS(start=lambda: None, stop=lambda: None))
    monkeypatch.setattr(nodesync, "SuperLinkNodes", lambda *a: None)
    ep = NS(host="127.0.0.1", port=1, local_address="127.0.0.1:1", address="127.0.0.1:1")
    cfg = NS(
        hosts=["localhost"],
        superlink=ep,
        registry=ep,
        gateway=ep,
        registry_url="http://127.0.0.1:1",
        node_sync_seconds=5.0,
        database_url="",
    )
    home = NS(root=tmp_path, tls=NS(ca=tmp_path / "ca.pem"), ensure_tls=lambda hosts: None)
    console = Console(record=True, width=200)
    assert stack.run_stack(home, cfg, console) == 1  # ends when the SuperLink exits
    out = console.export_text()
    assert spawned.count("registry") == 2 and spawned.count("gateway") == 1, spawned
    assert "registry exited (code 1); restarting it" in out and "superlink exited" in out


@pytest.mark.slow
def test_unapproved_node_key_waits_with_its_fingerprint_until_approved(tmp_path):
    """`dbclient join` with a key the operator has not approved: one line with the key's fingerprint, then it
    keeps trying (backoff) and connects once the operator approves it, with no restart by hand."""
    import time

    from dblocks.client.nodekey import public_key_fingerprint
    from dblocks.server.ops.localfed import LocalFederation

    fed = LocalFederation(tmp_path / "fed", task="digits", with_registry=False)
    try:
        _, paths, _ = fed.company_data(1, public=50, alpha=0.5)
        fed.start_superlink()
        from dblocks.server.ops.launcher import ServerHome
        from dblocks.server.ops.provision import ensure_directory_key

        ensure_directory_key(ServerHome(fed.ca.parents[1]))  # directory.pub, as the operator hands it out
        fed.add_company("newcomer", paths[0], approve=False, env={"DBLOCKS_JOIN_APPROVAL_WAIT": "2"})
        home = fed.company_home("newcomer")
        log = home / "join.log"
        fp = public_key_fingerprint((home / "node.key.pub").read_text())

        def wait(pred, seconds):
            end = time.time() + seconds
            while time.time() < end and not pred():
                time.sleep(1)
            return pred()

        assert wait(lambda: log.exists() and "not approved" in log.read_text(), 120), log.read_text()[-3000:]
        assert fp in log.read_text() and "Traceback" not in log.read_text()
        assert fed.procs["newcomer"].poll() is None  # still waiting, not exited
        fed.approve("newcomer")
        assert wait(lambda: "SuperNode ID" in log.read_text(), 180), log.read_text()[-3000:]
    finally:
        fed.stop()
