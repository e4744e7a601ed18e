"""Operator-side processes: the Flower SuperLink, run submission (`flwr run`) and node registration.

Everything lives under one server home (default `~/.dblocks/server`, or `$DBLOCKS_HOME/server`):
    tls/          ca.pem, server.pem, server.key (ca.key stays here, never leaves)
    flwr/         FLWR_HOME of the operator's Flower tools (config.toml names the SuperLink)
    runs/RUN/     run.json (RunConfig: settings and paths, never a secret), registry.token (0600), checkpoints/, logs
    superlink.db  the SuperLink's state
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

from dblocks.server.federation.config import RunConfig
from dblocks.shared.procs import flwr_env

from .deployment import write_secret
from .procs import spawn, wait_for_port
from .tls import ServerTLS, create_server_tls

EXPOSE_FLAG = "--expose-control-api-unauthenticated"


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); any other name may resolve publicly."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def control_api_refusal(host: str, expose_control_api: bool) -> str | None:
    """Why the SuperLink must not bind to `host` (None: it may). Flower 1.41 serves the Control API (`flwr run`,
    node registration; no authentication in open-source Flower) on the same port as the Fleet API."""
    if is_loopback(host) or expose_control_api:
        return None
    return (
        f"refusing to bind the SuperLink to {host!r}: its port also serves Flower's Control API, which has no "
        "authentication (whoever reaches it can submit runs and register nodes); keep the SuperLink on 127.0.0.1 "
        "and expose only the Fleet gateway (`dbserver init --host NAME`, then `dbserver start`), or pass "
        f"{EXPOSE_FLAG} if you accept that risk"
    )


def default_home() -> Path:
    return Path(os.environ.get("DBLOCKS_HOME", Path.home() / ".dblocks")) / "server"


@dataclass(frozen=True)
class ServerHome:
    root: Path

    @property
    def tls(self) -> ServerTLS:
        d = self.root / "tls"
        return ServerTLS(d / "ca.pem", d / "server.pem", d / "server.key")

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def ensure_tls(self, hosts: list[str]) -> ServerTLS:
        if not self.tls.exists():
            create_server_tls(self.root / "tls", hosts)
        return self.tls

    def env(self) -> dict[str, str]:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        return flwr_env(self.flwr_home)

    def write_flwr_config(self, address: str, insecure: bool) -> None:
        """Point the operator's `flwr` CLI at the SuperLink (its Control API)."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        tls_line = "insecure = true" if insecure else f'root-certificates = "{self.tls.ca}"'
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{address}"\n{tls_line}\n'
        )

    def app_dir(self) -> Path:
        """A copy of the packaged Flower App (pyproject only: components point into installed dblocks)."""
        d = self.root / "app"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(str(files("dblocks.server") / "flwrapp" / "pyproject.toml"), d / "pyproject.toml")
        return d


def start_superlink(
    home: ServerHome,
    host: str,
    port: int,
    insecure: bool,
    node_auth: bool,
    tied: bool = True,
    timeout: float = 60.0,
    expose_control_api: bool = False,
) -> subprocess.Popen:
    """Start `flower-superlink` (Fleet, Control and ServerApp runtime on one port) and wait until it listens.
    A non-loopback `host` is refused (ValueError) unless `expose_control_api`: see `control_api_refusal`."""
    refusal = control_api_refusal(host, expose_control_api)
    if refusal:
        raise ValueError(refusal)
    cmd = [
        "flower-superlink",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(home.root / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]
    if insecure:
        cmd.append("--insecure")
    else:
        tls = home.ensure_tls(
            ["localhost", "127.0.0.1", host] if host not in ("localhost", "127.0.0.1") else ["localhost", "127.0.0.1"]
        )
        cmd += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
        if node_auth:
            cmd.append("--enable-supernode-auth")
    home.root.mkdir(parents=True, exist_ok=True)
    proc = spawn(cmd, env=home.env(), log=home.root / "superlink.log", tied=tied, group=False)
    wait_for_port("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, timeout, proc)
    home.write_flwr_config(f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}", insecure)
    return proc


def submit_run(
    home: ServerHome, cfg: RunConfig, log: Path | None = None, tied: bool = True, registry_token: str | None = None
) -> subprocess.Popen:
    """`flwr run` the dblocks app with this run's config file; streams the ServerApp's log to `log`.
    `registry_token` goes to `runs/RUN/registry.token` (0600); run.json names only that file."""
    run_dir = home.run_dir(cfg.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    if registry_token:
        token_path = run_dir / "registry.token"
        write_secret(token_path, registry_token)
        cfg = replace(cfg, registry_token_file=str(token_path))
    cfg_path = run_dir / "run.json"
    cfg.save(cfg_path)
    cmd = ["flwr", "run", str(home.app_dir()), "local", "--stream", "--run-config", f'config-path="{cfg_path}"']
    return spawn(cmd, env=home.env(), log=log or run_dir / "serverapp.log", tied=tied, group=False)


def register_node(home: ServerHome, public_key: Path, name: str | None = None) -> str:
    """Register a company's node public key with the SuperLink (`flwr supernode register`)."""
    cmd = ["flwr", "supernode", "register", str(public_key), "local"] + (["--name", name] if name else [])
    r = subprocess.run(cmd, env=home.env(), capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(
            f"registering {public_key} with the SuperLink failed: {(r.stdout + r.stderr).strip()[-500:]}"
        )
    return r.stdout.strip()
