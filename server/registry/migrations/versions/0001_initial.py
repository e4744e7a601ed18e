"""Initial schema: runs, blocks, block versions, round reports, nodes, node privacy, audits, artifacts,
events (append-only, enforced by triggers) and API tokens.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


APPEND_ONLY_SQLITE = [
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
]
APPEND_ONLY_POSTGRESQL = [
    """CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'events are append-only'; END $$""",
    "CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events FOR EACH ROW EXECUTE FUNCTION "
    "events_append_only()",
    "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events FOR EACH STATEMENT EXECUTE FUNCTION "
    "events_append_only()",
]


def _append_only_statements() -> list[str]:
    dialect = op.get_bind().dialect.name
    return {"sqlite": APPEND_ONLY_SQLITE, "postgresql": APPEND_ONLY_POSTGRESQL}.get(dialect, [])


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("actor_role", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("subject_type", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_run_id"), ["run_id"], unique=False)
    for statement in _append_only_statements():
        op.execute(statement)

    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("organisation", sa.String(length=200), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("blocks_trained", sa.Integer(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("approved_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nodes_status"), ["status"], unique=False)

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("dataset", sa.JSON(), nullable=False),
        sa.Column("num_blocks", sa.Integer(), nullable=False),
        sa.Column("schedule", sa.JSON(), nullable=False),
        sa.Column("secagg", sa.JSON(), nullable=False),
        sa.Column("dp", sa.JSON(), nullable=False),
        sa.Column("num_rounds", sa.Integer(), nullable=False),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_task"), ["task"], unique=False)

    op.create_table(
        "blocks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("block_index", sa.Integer(), nullable=False),
        sa.Column("owned_lo", sa.Float(), nullable=True),
        sa.Column("owned_hi", sa.Float(), nullable=True),
        sa.Column("train_lo", sa.Float(), nullable=True),
        sa.Column("train_hi", sa.Float(), nullable=True),
        sa.Column("param_count", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "block_index", name="uq_blocks_run_block"),
    )
    with op.batch_alter_table("blocks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_blocks_run_id"), ["run_id"], unique=False)

    op.create_table(
        "node_privacy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("block_index", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("accountant", sa.String(length=64), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("node_privacy", schema=None) as batch_op:
        batch_op.create_index("ix_node_privacy_node_run_block", ["node_id", "run_id", "block_index"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_privacy_run_id"), ["run_id"], unique=False)

    op.create_table(
        "round_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("block_index", sa.Integer(), nullable=False),
        sa.Column("cohort", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("round_reports", schema=None) as batch_op:
        batch_op.create_index("ix_round_reports_run_round", ["run_id", "round"], unique=False)

    op.create_table(
        "block_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("block_id", sa.Integer(), nullable=False),
        sa.Column("block_index", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("parent_version_id", sa.Integer(), nullable=True),
        sa.Column("cohort", sa.JSON(), nullable=False),
        sa.Column("owned_lo", sa.Float(), nullable=False),
        sa.Column("owned_hi", sa.Float(), nullable=False),
        sa.Column("train_lo", sa.Float(), nullable=False),
        sa.Column("train_hi", sa.Float(), nullable=False),
        sa.Column("param_count", sa.Integer(), nullable=False),
        sa.Column("clip_norm", sa.Float(), nullable=True),
        sa.Column("noise_multiplier", sa.Float(), nullable=True),
        sa.Column("record_epsilon", sa.Float(), nullable=True),
        sa.Column("record_delta", sa.Float(), nullable=True),
        sa.Column("record_sample_rate", sa.Float(), nullable=True),
        sa.Column("record_steps", sa.Integer(), nullable=True),
        sa.Column("client_epsilon", sa.Float(), nullable=True),
        sa.Column("client_delta", sa.Float(), nullable=True),
        sa.Column("accountant", sa.String(length=64), nullable=True),
        sa.Column("secagg_session", sa.String(length=200), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("weights_uri", sa.String(length=100), nullable=False),
        sa.Column("code_version", sa.String(length=200), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["block_id"],
            ["blocks.id"],
        ),
        sa.ForeignKeyConstraint(
            ["parent_version_id"],
            ["block_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "block_index", "round", name="uq_versions_run_block_round"),
        sa.UniqueConstraint("run_id", "block_index", "version", name="uq_versions_run_block_version"),
    )
    with op.batch_alter_table("block_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_block_versions_block_index"), ["block_index"], unique=False)
        batch_op.create_index(batch_op.f("ix_block_versions_parent_version_id"), ["parent_version_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_block_versions_record_epsilon"), ["record_epsilon"], unique=False)
        batch_op.create_index(batch_op.f("ix_block_versions_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_block_versions_sha256"), ["sha256"], unique=False)

    op.create_table(
        "audits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("block_version_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("block_index", sa.Integer(), nullable=False),
        sa.Column("attack", sa.String(length=200), nullable=False),
        sa.Column("observation_point", sa.String(length=200), nullable=False),
        sa.Column("adversary", sa.String(length=200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(length=128), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("controls", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["block_version_id"],
            ["block_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audits_block_version_id"), ["block_version_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audits_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audits_verdict"), ["verdict"], unique=False)

    op.create_table(
        "audit_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("audit_id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=128), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["audit_id"],
            ["audits.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("audit_id", "filename", name="uq_audit_artifacts_name"),
    )
    with op.batch_alter_table("audit_artifacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_artifacts_audit_id"), ["audit_id"], unique=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        op.execute("DROP TRIGGER IF EXISTS events_no_update ON events")
        op.execute("DROP FUNCTION IF EXISTS events_append_only()")
    elif op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")
    with op.batch_alter_table("audit_artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_artifacts_audit_id"))

    op.drop_table("audit_artifacts")
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audits_verdict"))
        batch_op.drop_index(batch_op.f("ix_audits_run_id"))
        batch_op.drop_index(batch_op.f("ix_audits_block_version_id"))

    op.drop_table("audits")
    with op.batch_alter_table("block_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_block_versions_sha256"))
        batch_op.drop_index(batch_op.f("ix_block_versions_run_id"))
        batch_op.drop_index(batch_op.f("ix_block_versions_record_epsilon"))
        batch_op.drop_index(batch_op.f("ix_block_versions_parent_version_id"))
        batch_op.drop_index(batch_op.f("ix_block_versions_block_index"))

    op.drop_table("block_versions")
    with op.batch_alter_table("round_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_round_reports_run_round")

    op.drop_table("round_reports")
    with op.batch_alter_table("node_privacy", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_privacy_run_id"))
        batch_op.drop_index("ix_node_privacy_node_run_block")

    op.drop_table("node_privacy")
    with op.batch_alter_table("blocks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_blocks_run_id"))

    op.drop_table("blocks")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_task"))
        batch_op.drop_index(batch_op.f("ix_runs_status"))

    op.drop_table("runs")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nodes_status"))

    op.drop_table("nodes")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_run_id"))
        batch_op.drop_index(batch_op.f("ix_events_kind"))

    op.drop_table("events")
    op.drop_table("api_tokens")
