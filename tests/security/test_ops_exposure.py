"""#14.8: operator-side secrets stay out of run.json, and the unauthenticated Control API stays on loopback.

Both go through the real `dbserver` CLI (typer's CliRunner); only the process launcher is replaced, so that no
Flower process starts: the test sees the exact command `dbserver` would have run.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dblocks.server.ops.launcher as launcher
from dblocks.server.cli import app
from dblocks.server.federation.config import RunConfig

TOKEN = "svc-token-that-must-not-leak-0123456789"


class Spawned(Exception):
    """Raised by the stand-in launcher: `dbserver` got as far as starting this command."""


@pytest.fixture
def ops_spawned(monkeypatch):
    """Replace the process launcher; the list receives every command `dbserver` tries to start."""
    calls: list[list[str]] = []

    def fake_spawn(cmd, **kw):
        calls.append([str(c) for c in cmd])
        raise Spawned(" ".join(map(str, cmd)))

    monkeypatch.setattr(launcher, "spawn", fake_spawn)
    return calls


def test_run_json_holds_no_registry_token(tmp_path, ops_spawned):
    """#14.8: on main, `dbserver run new --token T` wrote T in clear into runs/<id>/run.json (mode 0644 under the
    default umask). Now run.json names a 0600 file that holds the token, and no other file under the home has it."""
    home = tmp_path / "server"
    (home / "flwr").mkdir(parents=True)
    (home / "flwr" / "config.toml").write_text('[superlink]\ndefault = "local"\n')
    r = CliRunner().invoke(
        app,
        ["run", "new", "--home", str(home), "--registry-url", "http://127.0.0.1:1", "--run-id", "7", "--no-wait"],
        env={"DBLOCKS_REGISTRY_TOKEN": TOKEN},
    )
    assert isinstance(r.exception, Spawned) and ops_spawned[0][:2] == ["flwr", "run"], r.output
    run_json = home / "runs" / "7" / "run.json"
    assert TOKEN not in run_json.read_text(), "run.json holds the registry token"
    assert TOKEN not in " ".join(ops_spawned[0]), "the token is on the `flwr run` command line"
    holders = [p for p in home.rglob("*") if p.is_file() and TOKEN in p.read_text(errors="replace")]
    assert holders, "the ServerApp needs the token somewhere"
    for p in holders:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, f"{p} holds the token with mode {oct(p.stat().st_mode)}"
    cfg = RunConfig.load(run_json)  # what the ServerApp reads
    assert Path(json.loads(run_json.read_text())["registry_token_file"]) in holders
    assert cfg.registry_token == TOKEN and cfg.registry_url == "http://127.0.0.1:1"


def test_control_api_is_refused_on_a_public_host(tmp_path, ops_spawned):
    """#14.8: on main, `dbserver start --host 0.0.0.0` went on to start the SuperLink on 0.0.0.0 (its Control API,
    unauthenticated, on every interface) and only printed a note. Now it exits 2 with one line saying why and what
    to do, before anything starts; the loudly named flag lets an operator who means it through."""
    runner = CliRunner()
    for host, tls in (
        ("0.0.0.0", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("fl.example.org", True),
    ):
        args = ["start", "--host", host, "--home", str(tmp_path / "h")] + ([] if tls else ["--insecure"])
        r = runner.invoke(app, args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and not ops_spawned, (host, r.output, ops_spawned)
        assert len(lines) == 1 and "Control API" in lines[0] and "no authentication" in lines[0], r.output
        assert "127.0.0.1" in lines[0] and "gateway" in lines[0] and launcher.EXPOSE_FLAG in lines[0]
    with pytest.raises(ValueError, match="Control API"):  # the library entry point refuses too
        launcher.start_superlink(launcher.ServerHome(tmp_path / "h"), "0.0.0.0", 1, insecure=True, node_auth=False)
    assert not ops_spawned

    for host in ("127.0.0.1", "localhost", "::1"):
        r = runner.invoke(app, ["start", "--host", host, "--home", str(tmp_path / "h"), "--insecure"])
        assert isinstance(r.exception, Spawned), (host, r.output)
    r = runner.invoke(
        app, ["start", "--host", "0.0.0.0", "--home", str(tmp_path / "h"), "--insecure", launcher.EXPOSE_FLAG]
    )
    assert isinstance(r.exception, Spawned), r.output
    assert ops_spawned[-1][ops_spawned[-1].index("--host") + 1] == "0.0.0.0"
