"""The operator's deployment: `dbserver init` writes it, `dbserver start` and `dbserver nodes` read it.

One file, `<server home>/server.toml`, says where every server-side process listens. The default keeps
everything but the Fleet API on loopback:

    SuperLink  127.0.0.1:9091   Fleet + Control + ServerApp runtime (Flower 1.41 serves all three on one port;
                                its Control API has no authentication in open-source Flower)
    gateway    0.0.0.0:9092     the only public port: TLS, forwards POST /v1/fleet/* to the SuperLink, 404 else
    registry   127.0.0.1:8700   REST API + dashboard (admin endpoints)

Secrets live beside it, mode 0600: `secrets/admin.token` (operator commands) and `secrets/service.token`
(the federation server and the node sync). `tls/ca.key` signs the server certificate once; companies get
`tls/ca.pem` only, and adding a company never reissues a certificate (companies authenticate with node keys).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dblocks.shared.privatefile import write_private

CONFIG_NAME = "server.toml"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def local_address(self) -> str:
        """Where a process on this host reaches it (a wildcard bind is reached via loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return Endpoint(host, self.port).address


@dataclass(frozen=True)
class ServerConfig:
    """Where the server-side processes listen and what the certificate names. Read from server.toml."""

    hosts: list[str]  # names/addresses companies use to reach the gateway (the certificate's SANs)
    superlink: Endpoint = Endpoint("127.0.0.1", 9091)
    gateway: Endpoint = Endpoint("0.0.0.0", 9092)
    registry: Endpoint = Endpoint("127.0.0.1", 8700)
    database_url: str = ""  # empty: SQLite under $DBLOCKS_HOME/registry
    node_sync_seconds: float = 5.0  # how often approved/revoked keys are carried to the SuperLink

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry.local_address}"

    def save(self, path: Path) -> None:
        lines = [
            "# dblocks server deployment (written by `dbserver init`; edit and restart `dbserver start`)",
            f"hosts = [{', '.join(_q(h) for h in self.hosts)}]",
            f"database_url = {_q(self.database_url)}",
            f"node_sync_seconds = {float(self.node_sync_seconds)}",
            "",
        ]
        for name in ("superlink", "gateway", "registry"):
            ep: Endpoint = getattr(self, name)
            lines += [f"[{name}]", f"host = {_q(ep.host)}", f"port = {int(ep.port)}", ""]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines))

    @classmethod
    def load(cls, path: Path) -> ServerConfig:
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e}); fix it or run `dbserver init --force`") from None
        known = {f.name for f in fields(cls)}
        unknown = raw.keys() - known
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        kw = dict(raw)
        for name in ("superlink", "gateway", "registry"):
            if name in kw:
                d = kw[name]
                if set(d) != {"host", "port"}:
                    raise ValueError(f"{path}: [{name}] needs exactly `host` and `port`, got {sorted(d)}")
                kw[name] = Endpoint(str(d["host"]), int(d["port"]))
        if not kw.get("hosts"):
            raise ValueError(f"{path}: `hosts` must name at least one host the companies connect to")
        cfg = cls(**kw)
        if cfg.superlink.host not in ("127.0.0.1", "::1", "localhost"):
            # Control API and ServerApp runtime share this port and have no authentication in open-source Flower
            raise ValueError(
                f"{path}: [superlink] host is {cfg.superlink.host!r}; it must stay on loopback "
                "(127.0.0.1): the companies reach the Fleet API through [gateway]"
            )
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_secret(path: Path, value: str) -> None:
    """Write a secret readable only by its owner (a new 0600 file replaces any old one; a link is refused)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, (value.strip() + "\n").encode())


def read_secret(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `dbserver init` (it creates the registry tokens)")
    return path.read_text().strip()
