"""`dbserver init`: the CA and server certificate, the registry's database and tokens, and server.toml.

Idempotent where it matters: the CA is created once and kept (companies hold ca.pem); running init again
with new host names reissues only the server certificate; existing tokens are kept unless `rotate_tokens`.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .deployment import CONFIG_NAME, Endpoint, ServerConfig, read_secret, write_secret
from .launcher import ServerHome
from .tls import create_server_tls

LOCAL_NAMES = ["localhost", "127.0.0.1"]  # the gateway and the operator's tools reach the SuperLink on loopback


def config_path(home: ServerHome) -> Path:
    return home.root / CONFIG_NAME


def admin_token_path(home: ServerHome) -> Path:
    return home.root / "secrets" / "admin.token"


def service_token_path(home: ServerHome) -> Path:
    return home.root / "secrets" / "service.token"


def directory_key_path(home: ServerHome) -> Path:
    """The operator's SecAgg directory signing key (0600); companies pin its public half, directory.pub."""
    return home.root / "secrets" / "directory.key"


def directory_public_path(home: ServerHome) -> Path:
    """directory.pub, beside ca.pem: give both to every company."""
    return home.root / "tls" / "directory.pub"


def directory_path(home: ServerHome) -> Path:
    """The signed SecAgg directory the node sync writes and every run relays."""
    return home.root / "secagg" / "directory.json"


def directory_publisher(home: ServerHome):
    from .nodesync import DirectoryPublisher

    return DirectoryPublisher(directory_key_path(home), directory_path(home))


def ensure_directory_key(home: ServerHome) -> Path:
    """Create the directory key once (kept across inits, like the CA) and write directory.pub."""
    from dblocks.privacy.secagg.directory import create_signing_key

    public = create_signing_key(directory_key_path(home))
    directory_public_path(home).parent.mkdir(parents=True, exist_ok=True)
    directory_public_path(home).write_text(public.hex() + "\n")
    return directory_public_path(home)


def enroll_secagg_identity(home: ServerHome, node_id: str, identity_hex: str) -> None:
    """Zero-config mode (no registry): enrol a node's SecAgg identity in the signed directory directly.

    An id keeps the identity it was enrolled with: a different one is refused (a changed key is what a key
    substitution looks like; the company must join with a new node key instead)."""
    from dblocks.privacy.secagg.directory import Directory

    identity = bytes.fromhex(identity_hex)
    if len(identity) != 32:
        raise ValueError(f"a SecAgg identity is 32 bytes (64 hex characters), got {len(identity)} bytes")
    ensure_directory_key(home)
    path = directory_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:  # approvals at once (operators, scripts) add, never overwrite
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = dict(Directory.from_bytes(path.read_bytes()).entries) if path.exists() else {}
        if entries.get(str(node_id), identity) != identity:
            raise ValueError(f"node {node_id} is enrolled with another SecAgg identity; enrolment never changes a key")
        entries[str(node_id)] = identity
        directory_publisher(home).publish(entries)


def load_config(home: ServerHome) -> ServerConfig | None:
    """The deployment of this server home, or None where `dbserver init` never ran (zero-config mode)."""
    p = config_path(home)
    return ServerConfig.load(p) if p.exists() else None


def registry_environ(home: ServerHome, cfg: ServerConfig) -> dict[str, str]:
    """Environment of the registry process: its data beside the server home, the configured database."""
    env = dict(os.environ, DBLOCKS_HOME=str(home.root.parent))
    if cfg.database_url:
        env["DBLOCKS_DATABASE_URL"] = cfg.database_url
    return env


@dataclass(frozen=True)
class InitResult:
    config: ServerConfig
    config_path: Path
    ca: Path
    directory_key: Path  # directory.pub: companies pin it (`dbclient join --directory-key`)
    admin_token: str | None  # shown once; None where an existing token was kept
    certificate_hosts: list[str]


def init_server(
    home: ServerHome,
    hosts: list[str],
    *,
    gateway_port: int = 9092,
    gateway_host: str = "0.0.0.0",
    superlink_port: int = 9091,
    registry_port: int = 8700,
    registry_host: str = "127.0.0.1",
    database_url: str = "",
    rotate_tokens: bool = False,
) -> InitResult:
    if not hosts:
        raise ValueError("name at least one --host that the companies use to reach this server")
    cfg = ServerConfig(
        hosts=list(dict.fromkeys(hosts)),
        superlink=Endpoint("127.0.0.1", superlink_port),
        gateway=Endpoint(gateway_host, gateway_port),
        registry=Endpoint(registry_host, registry_port),
        database_url=database_url,
    )
    previous = load_config(home) if config_path(home).exists() else None
    if previous is not None:
        cfg = replace(cfg, node_sync_seconds=previous.node_sync_seconds)
    cert_hosts = list(dict.fromkeys(cfg.hosts + LOCAL_NAMES))
    tls = create_server_tls(home.root / "tls", cert_hosts)
    admin = _ensure_tokens(home, cfg, rotate_tokens)
    home.write_flwr_config(cfg.superlink.local_address, insecure=False)  # the operator's `flwr` -> this SuperLink
    cfg.save(config_path(home))
    return InitResult(cfg, config_path(home), tls.ca, ensure_directory_key(home), admin, cert_hosts)


def _ensure_tokens(home: ServerHome, cfg: ServerConfig, rotate: bool) -> str | None:
    """Migrate the registry database and create the admin and service tokens (secrets/, 0600)."""
    from dblocks.server.registry import events
    from dblocks.server.registry.app import open_registry
    from dblocks.server.registry.auth import Principal, issue_token
    from dblocks.server.registry.config import RegistrySettings

    have = admin_token_path(home).exists() and service_token_path(home).exists()
    reg = open_registry(RegistrySettings.from_env(registry_environ(home, cfg)))
    try:
        if have and not rotate:
            return None
        with reg.db.writer() as s:
            who = Principal(0, "dbserver init", "admin")
            secrets = {}
            for role, name in (("admin", "operator (dbserver init)"), ("service", "federation server (dbserver init)")):
                row, secrets[role] = issue_token(s, name=name, role=role, created_by="dbserver init")
                events.record(
                    s,
                    who,
                    "token.created",
                    "token",
                    row.id,
                    after={"name": row.name, "role": row.role, "prefix": row.prefix},
                )
        write_secret(admin_token_path(home), secrets["admin"])
        write_secret(service_token_path(home), secrets["service"])
        return secrets["admin"]
    finally:
        reg.db.dispose()


def operator_registry(home: ServerHome):
    """A RegistryClient with the operator's admin token, or None in zero-config mode."""
    cfg = load_config(home)
    if cfg is None:
        return None
    from dblocks.shared.registry_client import RegistryClient

    return RegistryClient(cfg.registry_url, read_secret(admin_token_path(home)), connect_retries=2)
