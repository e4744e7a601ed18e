"""A company runs only its installed dblocks ClientApp: a server that ships its own ClientApp code is refused.

The attack is real: the same malicious app, sent to an unguarded `flower-supernode`, runs its code there (the
control). `dbclient join` refuses it through Flower's FAB verification and replies with an error.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from dblocks.client.appguard import DBLOCKS_CLIENTAPP, check_fab
from dblocks.server.ops.launcher import ServerHome, start_superlink
from dblocks.server.ops.procs import spawn, stop_group
from dblocks.shared.procs import flwr_env, free_port

BIN = Path(sys.executable).parent


def fab_of(files_: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files_.items():
            z.writestr(name, text)
    return buf.getvalue()


GENUINE = (files("dblocks.server") / "flwrapp" / "pyproject.toml").read_text()


def test_the_packaged_dblocks_app_passes_and_its_variants_do_not():
    from flwr.cli.build import build_fab_from_disk

    app = Path(str(files("dblocks.server") / "flwrapp"))
    assert check_fab(build_fab_from_disk(app)) == []  # what `flwr run` really sends
    evil_component = GENUINE.replace(f'clientapp = "{DBLOCKS_CLIENTAPP}"', 'clientapp = "evil:app"')
    assert any("names the ClientApp 'evil:app'" in p for p in check_fab(fab_of({"pyproject.toml": evil_component})))
    shadow = check_fab(fab_of({"pyproject.toml": GENUINE, "dblocks/client/clientapp.py": "import os"}))
    assert shadow and "carries no code" in shadow[0]  # a module that would shadow the installed package
    deps = GENUINE.replace("dependencies = []", 'dependencies = ["requests"]')
    assert any("dependencies" in p for p in check_fab(fab_of({"pyproject.toml": deps})))
    assert check_fab(b"not a zip") == ["not a zip archive"]


def test_flowers_own_fab_verification_accepts_what_the_guard_vouches_for_and_nothing_else():
    from flwr.cli.build import build_fab_from_disk
    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    from dblocks.client.appguard import AppGuard

    refusals = []
    guard = AppGuard(on_refusal=refusals.append)
    content = build_fab_from_disk(Path(str(files("dblocks.server") / "flwrapp")))
    vouched = guard.review(Fab("h", content, {}), run_id=7)
    assert vouched.verifications["valid_license"] and _verify_fab(vouched, guard.trusted_entities(None))
    # the signature binds the content: the same verification data on other bytes fails
    tampered = Fab("h", content + b" ", vouched.verifications)
    assert not _verify_fab(tampered, guard.trusted_entities(None))
    # another process's guard (another key) does not accept this one's signature
    assert not _verify_fab(vouched, AppGuard().trusted_entities(None))
    # a FAB with code is passed on unsigned (Flower then refuses it) and the refusal is reported
    evil = fab_of({"pyproject.toml": GENUINE, "evil.py": "print(1)"})
    assert guard.review(Fab("e", evil, {}), run_id=8).verifications == {}
    assert guard.refused == {8: check_fab(evil)} and "run 8" in refusals[0]


EVIL_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "evil"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "evil:server"
clientapp = "evil:client"

[tool.flwr.app.config]
out = ""
"""

EVIL_CODE = """
import json, time
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.query()
def query(msg, context):
    Path(context.run_config["out"], f"pwned-{context.node_id}").write_text("server code ran at the company")
    return Message(RecordDict({"r": ConfigRecord({"ok": 1})}), reply_to=msg)


@server.main()
def main(grid, context):
    end = time.time() + 60
    while len(list(grid.get_node_ids())) < 2 and time.time() < end:
        time.sleep(1)
    msgs = [Message(RecordDict({"q": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="query")
            for n in grid.get_node_ids()]
    out = {}
    for reply in grid.send_and_receive(msgs, timeout=90):
        src = str(reply.metadata.src_node_id)
        out[src] = {"error": reply.error.code, "reason": reply.error.reason} if reply.has_error() else "ok"
    Path(context.run_config["out"], "replies.json").write_text(json.dumps(out))
"""


@pytest.mark.slow
def test_a_server_cannot_run_its_own_code_at_a_company(tmp_path):
    app = tmp_path / "evil-app"
    app.mkdir()
    (app / "pyproject.toml").write_text(EVIL_PYPROJECT)
    (app / "evil.py").write_text(EVIL_CODE)
    out = tmp_path / "out"
    out.mkdir()
    home = ServerHome(tmp_path / "server")
    port = free_port()
    procs = {}
    try:
        procs["superlink"] = start_superlink(home, "127.0.0.1", port, insecure=True, node_auth=False)
        data = tmp_path / "data.npz"
        from dblocks.server.ops.localfed import split_public_private
        from dblocks.shared.data import save_npz

        save_npz(split_public_private("digits", 100)[1].subset(list(range(60))), data)
        guarded_log = tmp_path / "guarded.log"
        procs["guarded"] = spawn(
            [
                str(BIN / "dbclient"),
                "join",
                "--insecure",
                "--server",
                f"127.0.0.1:{port}",
                "--data",
                str(data),
                "--home",
                str(tmp_path / "company"),
            ],
            log=guarded_log,
        )
        procs["unguarded"] = spawn(
            ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}", "--port", str(free_port())],
            env=flwr_env(tmp_path / "plain"),
            log=tmp_path / "plain.log",
        )
        guarded_id = _node_id(guarded_log, 60)
        run = subprocess.run(
            ["flwr", "run", str(app), "local", "--stream", "--run-config", f'out="{out}"'],
            env=home.env(),
            capture_output=True,
            text=True,
            timeout=240,
        )
        replies = json.loads((out / "replies.json").read_text()) if (out / "replies.json").exists() else None
        assert replies is not None, f"the malicious ServerApp did not finish: {run.stdout[-2000:]} {run.stderr[-2000:]}"
        assert len(replies) == 2, replies
        unguarded_id = next(n for n in replies if n != guarded_id)
        # control: the plain SuperNode executed the server's code
        assert replies[unguarded_id] == "ok" and (out / f"pwned-{unguarded_id}").exists()
        # dblocks: refused through Flower's FAB verification, nothing of the app ran
        assert replies[guarded_id] != "ok" and "could not be verified" in replies[guarded_id]["reason"], replies
        assert not (out / f"pwned-{guarded_id}").exists()
        progress = (tmp_path / "company" / "progress.log").read_text()
        assert "REFUSED" in progress and "evil:client" in progress and "evil.py" in progress
    finally:
        for p in reversed(list(procs.values())):
            stop_group(p) if p.pid != procs.get("superlink", p).pid else (p.terminate(), p.wait(timeout=30))


def _node_id(log: Path, timeout: float) -> str:
    end = time.time() + timeout
    while time.time() < end:
        m = re.search(r"SuperNode ID: (\d+)", log.read_text() if log.exists() else "")
        if m:
            return m.group(1)
        time.sleep(0.5)
    raise AssertionError(f"the guarded node never connected: {log.read_text()[-2000:]}")
