"""`dbserver registry` (serve the registry and dashboard) and `dbserver tokens ...` (API tokens).

Both work with no configuration: data under `$DBLOCKS_HOME/registry` (default ~/.dblocks/registry), SQLite.
Heavy imports happen inside the commands so `dbserver --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_PORT = 8700
ROLE_HELP = "admin | operator | researcher | viewer | service"

tokens_app = typer.Typer(
    help="Create, list and revoke registry API tokens (works on the database directly).", no_args_is_help=True
)


def _settings(home: Path | None, database_url: str | None, *, existing: bool = False):
    """Settings from the environment, with command-line overrides written back to it (for uvicorn workers).

    `--home` is the server home, as on every `dbserver` command (default $DBLOCKS_HOME/server): the registry
    keeps its data beside it, in `<home>/../registry`, and uses the database that `dbserver init` wrote into
    `<home>/server.toml`. `existing`: refuse a SQLite database that does not exist yet where --home holds a
    registry of its own (the base directory, its old meaning): a `tokens` command would make a second, empty one."""
    from .config import RegistrySettings

    if home is not None:
        home = home.expanduser().resolve()
        os.environ["DBLOCKS_HOME"] = str(home.parent)
    server_home = home or Path(os.environ.get("DBLOCKS_HOME") or Path.home() / ".dblocks").expanduser() / "server"
    if database_url is None and "DBLOCKS_DATABASE_URL" not in os.environ:
        database_url = _configured_database(server_home)
    if database_url:
        os.environ["DBLOCKS_DATABASE_URL"] = database_url
    settings = RegistrySettings.from_env()
    db_file = settings.data_dir / "registry.db"
    legacy = home is not None and (home / "registry" / "registry.db").exists()  # --home given as the base directory
    if (
        existing
        and home is not None
        and legacy
        and settings.database_url == f"sqlite:///{db_file}"
        and not db_file.exists()
    ):
        typer.echo(
            f"error: no registry database at {db_file}. --home is the server home, as on every dbserver command "
            f"(default ~/.dblocks/server; the registry's data is beside it in ../registry): start the registry "
            f"first (`dbserver init` or `dbserver registry`) or pass the server home: --home {home / 'server'}",
            err=True,
        )
        raise typer.Exit(2)
    return settings


def _configured_database(server_home: Path) -> str | None:
    """database_url from the server home's server.toml (`dbserver init --database-url`), if any."""
    import tomllib

    p = server_home / "server.toml"
    if not p.exists():
        return None
    try:
        return tomllib.loads(p.read_text()).get("database_url") or None
    except (OSError, tomllib.TOMLDecodeError):
        return None


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="server home, as on every dbserver command (env DBLOCKS_HOME/server; default ~/.dblocks/server); "
        "the registry's data is beside it, in ../registry",
    ),
]
DbUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL (env DBLOCKS_DATABASE_URL; default SQLite in the data dir)"),
]


def ensure_admin_token(reg) -> str | None:
    """Create an admin token if no active one exists (a fresh install); returns its secret, else None."""
    from sqlalchemy import select

    from . import events
    from .auth import Principal, issue_token
    from .models import ApiToken

    with reg.db.writer() as s:
        if s.execute(
            select(ApiToken.id).where(ApiToken.role == "admin", ApiToken.revoked_at.is_(None)).limit(1)
        ).first():
            return None
        row, secret = issue_token(s, name="bootstrap-admin", role="admin", created_by="dbserver registry")
        events.record(
            s,
            Principal(0, "dbserver registry", "admin"),
            "token.created",
            "token",
            row.id,
            after={"name": row.name, "role": row.role, "prefix": row.prefix},
        )
        return secret


def registry_command(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = DEFAULT_PORT,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    home: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Serve the registry API and the operator dashboard (migrates the database first)."""
    import uvicorn

    from .app import open_registry

    settings = _settings(home, database_url)
    reg = open_registry(settings)
    secret = ensure_admin_token(reg)
    reg.db.dispose()
    typer.echo(
        f"registry data: {settings.data_dir}  database: {settings.redacted_url()}  artifacts: {settings.artifact_dir}"
    )
    if secret:
        typer.echo(
            f"\nNo admin token existed, so one was created. It is shown only now; keep it safe:\n\n    {secret}\n"
        )
    typer.echo(f"dashboard: http://{host}:{port}/   API docs: http://{host}:{port}/docs")
    uvicorn.run(
        "dblocks.server.registry.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,
        proxy_headers=False,
    )


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help=ROLE_HELP)],
    name: Annotated[str | None, typer.Option(help="who or what uses it (default: the role)")] = None,
    home: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from . import events
    from .app import open_registry
    from .auth import ALL_ROLES, Principal, issue_token

    if role not in ALL_ROLES:
        raise typer.BadParameter(f"unknown role {role!r}; choose one of: {ROLE_HELP}", param_hint="--role")
    reg = open_registry(_settings(home, database_url, existing=True))
    with reg.db.writer() as s:
        row, secret = issue_token(s, name=name or role, role=role, created_by="dbserver tokens create")
        events.record(
            s,
            Principal(0, "dbserver tokens create", "admin"),
            "token.created",
            "token",
            row.id,
            after={"name": row.name, "role": row.role, "prefix": row.prefix},
        )
    reg.db.dispose()
    typer.echo(secret)
    typer.echo(f"# token {row.id} ({row.name}, role {row.role}); shown only now", err=True)


@tokens_app.command("list")
def tokens_list(home: DataDir = None, database_url: DbUrl = None) -> None:
    """List tokens (id, name, role, prefix, revoked)."""
    from sqlalchemy import select

    from .app import open_registry
    from .models import ApiToken

    reg = open_registry(_settings(home, database_url, existing=True))
    with reg.db.reader() as s:
        for t in s.execute(select(ApiToken).order_by(ApiToken.id)).scalars():
            state = f"revoked {t.revoked_at:%Y-%m-%d}" if t.revoked_at else "active"
            typer.echo(f"{t.id:>4}  {t.role:<10}  {t.prefix}…  {state:<18}  {t.name}")
    reg.db.dispose()


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, home: DataDir = None, database_url: DbUrl = None) -> None:
    """Revoke a token by id."""
    from . import events
    from .app import open_registry
    from .auth import Principal
    from .models import ApiToken, utcnow

    reg = open_registry(_settings(home, database_url, existing=True))
    with reg.db.writer() as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            raise typer.BadParameter(f"no token with id {token_id} (see `dbserver tokens list`)")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            events.record(
                s,
                Principal(0, "dbserver tokens revoke", "admin"),
                "token.revoked",
                "token",
                row.id,
                after={"name": row.name, "role": row.role},
            )
    reg.db.dispose()
    from .revocation import announce_revocation

    announce_revocation(reg.settings.data_dir)  # running registries on this host drop their token caches now
    typer.echo(f"token {token_id} revoked")
