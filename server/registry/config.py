"""Where the registry keeps its data and how big requests may be; read from the environment once.

Zero configuration works: everything lives under `$DBLOCKS_HOME/registry` (default `~/.dblocks/registry`):
`registry.db` (SQLite, WAL) and `artifacts/` (content-addressed files). Environment overrides:

- `DBLOCKS_HOME`: the base data directory (the registry uses its `registry/` subfolder).
- `DBLOCKS_DATABASE_URL`: any SQLAlchemy URL, e.g. `postgresql+psycopg://user:pw@host:5432/db`.
- `DBLOCKS_ARTIFACT_DIR`: where weight and artifact files go (default `<data dir>/artifacts`).
- `DBLOCKS_MAX_UPLOAD_MB`: largest multipart upload (weights, audit artifacts), MiB; default 64.
- `DBLOCKS_TRUST_PROXY`: `1` when the registry sits behind a reverse proxy that terminates TLS and sets
  `X-Forwarded-Proto`; the dashboard's cookies are then marked Secure when that header says https. Default 0:
  the header is ignored (anyone could send it) and only the request's own scheme counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class RegistrySettings:
    """Settings of one registry instance. Sizes are in bytes."""

    data_dir: Path
    database_url: str
    artifact_dir: Path
    max_upload_bytes: int = 64 * MiB  # multipart uploads: block weights (~10 MB) and audit artifacts
    max_json_bytes: int = 2 * MiB  # every other request body
    trust_proxy: bool = False  # believe X-Forwarded-Proto (only behind a proxy that sets it)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RegistrySettings:
        env = os.environ if environ is None else environ
        home = Path(env.get("DBLOCKS_HOME") or Path.home() / ".dblocks").expanduser()
        data_dir = home / "registry"
        url = env.get("DBLOCKS_DATABASE_URL") or f"sqlite:///{data_dir / 'registry.db'}"
        artifact_dir = Path(env.get("DBLOCKS_ARTIFACT_DIR") or data_dir / "artifacts").expanduser()
        max_mb = env.get("DBLOCKS_MAX_UPLOAD_MB")
        trust = env.get("DBLOCKS_TRUST_PROXY", "0").strip().lower()
        if trust not in ("0", "1", "true", "false", ""):
            raise ValueError(f"DBLOCKS_TRUST_PROXY must be 1 or 0, got {trust!r}")
        settings = cls(
            data_dir=data_dir, database_url=url, artifact_dir=artifact_dir, trust_proxy=trust in ("1", "true")
        )
        if max_mb:
            try:
                settings = replace(settings, max_upload_bytes=int(float(max_mb) * MiB))
            except ValueError:
                raise ValueError(f"DBLOCKS_MAX_UPLOAD_MB must be a number of MiB, got {max_mb!r}") from None
        return settings

    @classmethod
    def in_directory(cls, directory: str | os.PathLike, database_url: str | None = None) -> RegistrySettings:
        """Everything under one directory (tests, benchmarks); `database_url` overrides the SQLite file."""
        d = Path(directory)
        return cls(
            data_dir=d, database_url=database_url or f"sqlite:///{d / 'registry.db'}", artifact_dir=d / "artifacts"
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def redacted_url(self) -> str:
        """The database URL with any password replaced by ***, for logs."""
        from sqlalchemy.engine import make_url

        return make_url(self.database_url).render_as_string(hide_password=True)
