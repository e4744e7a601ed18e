"""The compose file's services as plain processes, in one network namespace (what the containers share):
init, SuperLink, registry, Fleet gateway and node sync run with exactly the commands compose.yaml gives them
(only /data is moved to a temporary folder and the registry uses SQLite instead of the postgres service).

Then the provisioning path end to end: a company's key approved in the registry (REST, as the dashboard
does) is registered on the SuperLink by the sync; the company joins through the gateway; revoking it in the
registry stops the node at its next request; approving the revoked key again is reported as needing a new
key. The gateway serves the Fleet API only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dblocks.server.ops.procs import spawn, stop_group

from .netns import Topology, unavailable_reason

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REASON = unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=f"needs a network namespace: {REASON}")]


def service_commands(data: Path) -> dict[str, list[str]]:
    services = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())["services"]
    out = {}
    for name, s in services.items():
        if "entrypoint" not in s:
            continue
        args = [re.sub(r"\$\{(\w+)(:\?[^}]*)?\}", "127.0.0.1", a) for a in s["entrypoint"] + s["command"]]
        out[name] = [a.replace("/data", str(data)) if a.startswith("/data") else a for a in args]
    return out


class Pod:
    def __init__(self, root: Path):
        self.net = Topology(0).create()
        self.ns = self.net.server
        self.data = root / "data"
        self.env = dict(
            os.environ,
            DBLOCKS_HOME=str(self.data),
            FLWR_HOME=str(self.data / "server" / "flwr"),
            PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        )
        self.env.pop("DBLOCKS_DATABASE_URL", None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.root = root

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        self.procs[name] = spawn(self.net.exec(self.ns, *args), env=env or self.env, log=self.root / f"{name}.log")
        return self.procs[name]

    def python(self, code: str, timeout: float = 60) -> dict:
        r = subprocess.run(
            self.net.exec(self.ns, sys.executable, "-c", code),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            stop_group(self.procs.pop(name), timeout=20)
        self.net.destroy()


def wait_for(pred, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


REGISTRY = """
import json, sys
from pathlib import Path
from dblocks.shared.registry_client import RegistryClient
reg = RegistryClient("http://127.0.0.1:8700", Path("{token}").read_text().strip())
"""


def test_compose_services_without_containers(tmp_path):
    pod = Pod(tmp_path)
    try:
        _scenario(pod, tmp_path)
    finally:
        pod.close()


def _scenario(pod: Pod, tmp: Path) -> None:
    cmds = service_commands(pod.data)
    init = subprocess.run(pod.net.exec(pod.ns, *cmds["init"]), env=pod.env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    for name in ("superlink", "registry", "gateway", "sync"):
        pod.spawn(name, cmds[name])
    ports = """
import json, socket, time
end = time.time() + 90
def up(p):
    try:
        socket.create_connection(("127.0.0.1", p), timeout=1).close(); return True
    except OSError: return False
while time.time() < end and not all(up(p) for p in (9091, 9092, 8700)):
    time.sleep(0.5)
print(json.dumps({p: up(p) for p in (9091, 9092, 8700)}))"""
    assert all(pod.python(ports, timeout=120).values()), {n: p.poll() for n, p in pod.procs.items()}
    ca = pod.data / "server" / "tls" / "ca.pem"
    token = pod.data / "server" / "secrets" / "admin.token"

    # the gateway serves the Fleet API and nothing else
    probe = pod.python(f"""
import json, httpx
out = {{}}
for path in ("/v1/control/list-nodes", "/v1/runtime/pull-messages", "/v1/fleet/get-run", "/docs"):
    out[path] = httpx.post("https://127.0.0.1:9092" + path, verify="{ca}", content=b"").status_code
out["GET fleet"] = httpx.get("https://127.0.0.1:9092/v1/fleet/get-run", verify="{ca}").status_code
print(json.dumps(out))""")
    assert probe["/v1/control/list-nodes"] == probe["/v1/runtime/pull-messages"] == probe["/docs"] == 404, probe
    assert probe["GET fleet"] == 404 and probe["/v1/fleet/get-run"] not in (404, 503), probe

    # approve a company in the registry (REST, as the dashboard's button) -> the sync registers its key
    company = tmp / "company"
    subprocess.run(
        [str(BIN / "dbclient"), "keys", "init", "--path", str(company / "node.key")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pub = (company / "node.key.pub").read_text().strip()
    node = pod.python(
        REGISTRY.format(token=token)
        + f"""
n = reg.register_node("acme", "Acme", {pub!r})
print(json.dumps(reg.approve_node(n["id"])))"""
    )

    def link_state():
        return pod.python(
            REGISTRY.format(token=token)
            + f"""
print(json.dumps(reg.get_node("{node["id"]}")["info"].get("superlink") or {{}}))"""
        )

    state = wait_for(
        lambda: (s := link_state()).get("status") == "registered" and s, 30, "the sync to register the key"
    )
    assert state["node_id"] and not state["error"]

    # the company joins through the gateway, then is revoked: its next request is refused and it stops
    from dblocks.server.ops.localfed import split_public_private
    from dblocks.shared.data import save_npz

    save_npz(split_public_private("digits", 100)[1].subset(list(range(60))), company / "data.npz")
    join = pod.spawn(
        "join",
        [
            str(BIN / "dbclient"),
            "join",
            "--server",
            "127.0.0.1:9092",
            "--ca",
            str(ca),
            "--key",
            str(company / "node.key"),
            "--data",
            str(company / "data.npz"),
            "--directory-key",
            str(ca.parent / "directory.pub"),
            "--home",
            str(company),
        ],
        env=dict(pod.env, DBLOCKS_HOME=str(company)),
    )
    log = tmp / "join.log"
    flower_id = wait_for(lambda: re.search(r"SuperNode ID: (\d+)", log.read_text()), 60, "the node to connect").group(1)
    assert flower_id == state["node_id"]
    wait_for(lambda: link_state().get("status") == "online", 30, "the node to show online")
    pod.python(
        REGISTRY.format(token=token)
        + f"""
print(json.dumps(reg.revoke_node("{node["id"]}", "contract ended")))"""
    )
    t0 = time.time()
    wait_for(lambda: join.poll() is not None, 60, "the revoked node to stop")
    assert link_state()["status"] == "unregistered"
    assert time.time() - t0 < 45  # the sync pass (<= 5 s) + the node's next heartbeat or poll

    # Flower never admits an unregistered key again: re-approving it is reported, not silently accepted
    pod.python(
        REGISTRY.format(token=token)
        + f"""
print(json.dumps(reg.approve_node("{node["id"]}")))"""
    )
    err = wait_for(lambda: link_state().get("error"), 30, "the sync to report the revoked key")
    assert "new key" in err
