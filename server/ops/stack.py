"""`dbserver start` after `dbserver init`: the whole server side as child processes of one command.

    SuperLink   127.0.0.1 (loopback)   Fleet + Control + ServerApp runtime
    registry    127.0.0.1 (loopback)   REST API + dashboard
    gateway     public address         POST /v1/fleet/* only, forwarded to the SuperLink
    node sync   thread                 registry decisions -> SuperLink node registrations

The registry and the gateway are supervised: one that exits is restarted (backing off up to a minute; the
SuperLink and the runs go on meanwhile; the node sync and the runs retry the registry). If the SuperLink
exits, the others are stopped and the command exits non-zero (a supervisor such as systemd or Kubernetes
restarts it; the SuperLink state, the registry database and the runs survive restarts).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from .deployment import ServerConfig, read_secret
from .launcher import ServerHome, start_superlink
from .procs import spawn, wait_for_port
from .provision import LOCAL_NAMES, registry_environ, service_token_path

BIN = Path(sys.executable).parent


def run_stack(home: ServerHome, cfg: ServerConfig, console) -> int:
    from dblocks.shared.registry_client import RegistryClient

    from .nodesync import NodeSyncLoop, SuperLinkNodes

    home.ensure_tls(list(dict.fromkeys(cfg.hosts + LOCAL_NAMES)))
    procs: dict[str, subprocess.Popen] = {}
    sync = None
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        procs["superlink"] = start_superlink(
            home, cfg.superlink.host, cfg.superlink.port, insecure=False, node_auth=True
        )
        reg_cmd = [str(BIN / "dbserver"), "registry", "--host", cfg.registry.host, "--port", str(cfg.registry.port)]
        gw_cmd = [str(BIN / "dbserver"), "gateway", "--upstream", cfg.superlink.local_address]
        gw_cmd += ["--bind", cfg.gateway.host, "--port", str(cfg.gateway.port), "--home", str(home.root)]
        restartable = {
            "registry": lambda: spawn(reg_cmd, env=registry_environ(home, cfg), log=home.root / "registry.log"),
            "gateway": lambda: spawn(gw_cmd, log=home.root / "gateway.log"),
        }
        for name, start in restartable.items():
            procs[name] = start()
        h, p = cfg.registry.local_address.rsplit(":", 1)
        wait_for_port(h, int(p), 90, procs["registry"])
        h, p = cfg.gateway.local_address.rsplit(":", 1)
        wait_for_port(h.strip("[]"), int(p), 60, procs["gateway"])
        registry = RegistryClient(cfg.registry_url, read_secret(service_token_path(home)))
        from .provision import directory_publisher, ensure_directory_key

        ensure_directory_key(home)
        sync = NodeSyncLoop(
            registry,
            SuperLinkNodes(cfg.superlink.local_address, home.tls.ca),
            cfg.node_sync_seconds,
            directory_publisher(home),
        )
        sync.start()
        console.print(
            f"Fleet API (companies): {cfg.hosts[0]}:{cfg.gateway.port} via the gateway on {cfg.gateway.address}"
        )
        console.print(f"SuperLink (loopback only): {cfg.superlink.address}; logs in {home.root}")
        console.print(f"registry + dashboard (loopback only): {cfg.registry_url}/")
        console.print(f"companies need the CA certificate: {home.tls.ca}")
        backoff = {name: 1.0 for name in restartable}
        due: dict[str, float] = {}
        while not stopping:
            if procs["superlink"].poll() is not None:
                console.print(
                    f"[red]superlink exited (code {procs['superlink'].returncode}); stopping the rest; "
                    f"see {home.root / 'superlink.log'}[/red]"
                )
                return 1
            for name, start in restartable.items():
                pr = procs[name]
                if pr.poll() is None:
                    continue
                if name not in due:
                    console.print(
                        f"[yellow]{name} exited (code {pr.returncode}); restarting it in {backoff[name]:.0f} s; "
                        f"see {home.root / (name + '.log')}[/yellow]"
                    )
                    due[name] = time.monotonic() + backoff[name]
                elif time.monotonic() >= due[name]:
                    del due[name]
                    procs[name] = start()
                    backoff[name] = min(60.0, backoff[name] * 2)
            time.sleep(0.5)
        return 0
    finally:
        if sync is not None:
            sync.stop()
        for name in ("gateway", "registry", "superlink"):
            if name in procs and procs[name].poll() is None:
                procs[name].send_signal(signal.SIGTERM)
        for pr in procs.values():
            try:
                pr.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pr.kill()
