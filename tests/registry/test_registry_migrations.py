"""The shipped Alembic migrations build exactly the schema the models describe, on both databases, and
go down and up again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from dblocks.server.registry.db import MIGRATIONS_DIR, Database
from dblocks.server.registry.models import Base


def test_migrations_match_the_models(settings):
    db = Database(settings)
    db.migrate()
    with db.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.dispose()
    assert diff == [], f"models and migrations disagree; add a migration: {diff}"


def test_downgrade_to_base_and_up_again(settings):
    db = Database(settings)
    db.migrate()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.write_engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(db.write_engine).get_table_names()) <= {"alembic_version"}
    db.migrate()
    assert {"runs", "blocks", "block_versions", "events", "api_tokens"} <= set(
        inspect(db.write_engine).get_table_names()
    )
    db.migrate()  # at head: a no-op
    db.dispose()
