"""Alembic environment of the registry. The app passes its connection in `config.attributes["connection"]`;
run by hand, `alembic -x url=sqlite:///path upgrade head` from this folder works too."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from dblocks.server.registry.models import Base

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK_KEY = 7_316_802_551  # PostgreSQL advisory lock: one migrator at a time


def run_with(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database to migrate: pass -x url=URL or set sqlalchemy.url")
    with create_engine(url).connect() as conn:
        run_with(conn)
