"""Tables of the registry (SQLAlchemy 2 ORM). Every change to them goes through an Alembic migration in
`migrations/versions/`; the app runs `upgrade head` on startup.

Times are stored as naive UTC and read back as aware UTC (`UTCDateTime`), so SQLite and PostgreSQL agree.
Sigma intervals are (lo, hi) in the target's units, as in `dblocks.shared.schedule`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

RUN_STATUSES = ("created", "running", "paused", "stopped", "finished", "failed")
ROUND_STATUSES = ("completed", "skipped", "rerun", "failed")
NODE_STATUSES = ("pending", "approved", "revoked")
AUDIT_VERDICTS = ("pass", "fail", "inconclusive")
ROLES = ("admin", "operator", "researcher", "viewer", "service")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as naive UTC, returned as timezone-aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use an aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON, datetime: UTCDateTime}


class Run(Base):
    """One federated training run of a B-block model."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(200), index=True)
    dataset: Mapped[dict]
    num_blocks: Mapped[int]
    schedule: Mapped[dict]  # NoiseSchedule.to_dict(): P_mean, P_std, sigma range, partition, gamma
    secagg: Mapped[dict]
    dp: Mapped[dict]
    num_rounds: Mapped[int]
    current_round: Mapped[int] = mapped_column(default=0)  # highest round any block reported
    status: Mapped[str] = mapped_column(String(16), index=True, default="created")
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)  # any change to the run or what is recorded under it

    blocks: Mapped[list[Block]] = relationship(back_populates="run", order_by="Block.block_index")


class Block(Base):
    """Block i of a run: its noise intervals. Its row is also the lock that numbers its versions."""

    __tablename__ = "blocks"
    __table_args__ = (UniqueConstraint("run_id", "block_index", name="uq_blocks_run_block"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    block_index: Mapped[int]
    owned_lo: Mapped[float | None] = mapped_column(Float)
    owned_hi: Mapped[float | None] = mapped_column(Float)
    train_lo: Mapped[float | None] = mapped_column(Float)
    train_hi: Mapped[float | None] = mapped_column(Float)
    param_count: Mapped[int | None]

    run: Mapped[Run] = relationship(back_populates="blocks")


class BlockVersion(Base):
    """Weights of one block after one round, with everything needed to trust and reproduce them."""

    __tablename__ = "block_versions"
    __table_args__ = (
        UniqueConstraint("run_id", "block_index", "round", name="uq_versions_run_block_round"),
        UniqueConstraint("run_id", "block_index", "version", name="uq_versions_run_block_version"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    block_id: Mapped[int] = mapped_column(ForeignKey("blocks.id"))
    block_index: Mapped[int] = mapped_column(index=True)
    version: Mapped[int]  # 1, 2, ... per (run, block)
    round: Mapped[int]
    parent_version_id: Mapped[int | None] = mapped_column(ForeignKey("block_versions.id"), index=True)
    cohort: Mapped[list]  # node ids that trained it this round
    owned_lo: Mapped[float] = mapped_column(Float)
    owned_hi: Mapped[float] = mapped_column(Float)
    train_lo: Mapped[float] = mapped_column(Float)
    train_hi: Mapped[float] = mapped_column(Float)
    param_count: Mapped[int]
    clip_norm: Mapped[float | None] = mapped_column(Float)
    noise_multiplier: Mapped[float | None] = mapped_column(Float)
    record_epsilon: Mapped[float | None] = mapped_column(Float, index=True)
    record_delta: Mapped[float | None] = mapped_column(Float)
    record_sample_rate: Mapped[float | None] = mapped_column(Float)
    record_steps: Mapped[int | None]
    client_epsilon: Mapped[float | None] = mapped_column(Float)
    client_delta: Mapped[float | None] = mapped_column(Float)
    accountant: Mapped[str | None] = mapped_column(String(64))
    secagg_session: Mapped[str | None] = mapped_column(String(200))
    metrics: Mapped[dict]
    spec_json: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int]
    weights_uri: Mapped[str] = mapped_column(String(100))  # "sha256:<hex>" in the artifact store
    code_version: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoundReport(Base):
    """What happened to one block in one round (completed, skipped, rerun, failed) and who took part."""

    __tablename__ = "round_reports"
    __table_args__ = (Index("ix_round_reports_run_round", "run_id", "round"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    round: Mapped[int]
    block_index: Mapped[int]
    cohort: Mapped[list]
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    stats: Mapped[dict]
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Node(Base):
    """A company's SuperNode, known by the fingerprint of its public key."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    organisation: Mapped[str] = mapped_column(String(200))
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128), unique=True)
    # Ed25519 public key (64 hex) of the node's SecAgg identity, enrolled at approval; never changes once set
    secagg_identity: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    status_reason: Mapped[str | None] = mapped_column(Text)
    blocks_trained: Mapped[int] = mapped_column(default=0)  # block versions whose cohort named this node
    info: Mapped[dict] = mapped_column(default=dict)  # last self-reported facts (address, software version)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    approved_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None]


class NodePrivacy(Base):
    """Privacy spent by one node's data in one run, composed up to `round`.

    epsilon is the accountant's total at `delta` over every release the node's data made in the run (all
    rounds and all blocks, composed by `accountant`), not an increment; `block_index` is the block of the
    newest release. The newest row per (node, run) is the run total.
    """

    __tablename__ = "node_privacy"
    __table_args__ = (Index("ix_node_privacy_node_run_block", "node_id", "run_id", "block_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    block_index: Mapped[int]
    round: Mapped[int]
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    accountant: Mapped[str] = mapped_column(String(64))
    sample_rate: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Audit(Base):
    """A leakage audit of one block version: attack, threat model, metrics with CIs, controls, verdict."""

    __tablename__ = "audits"
    id: Mapped[int] = mapped_column(primary_key=True)
    block_version_id: Mapped[int] = mapped_column(ForeignKey("block_versions.id"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    block_index: Mapped[int]
    attack: Mapped[str] = mapped_column(String(200))
    observation_point: Mapped[str] = mapped_column(String(200))
    adversary: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict]
    config_hash: Mapped[str] = mapped_column(String(128))
    seeds: Mapped[list]
    metrics: Mapped[dict]
    controls: Mapped[dict]
    verdict: Mapped[str] = mapped_column(String(16), index=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    artifacts: Mapped[list[AuditArtifact]] = relationship(order_by="AuditArtifact.filename", lazy="selectin")


class AuditArtifact(Base):
    """A file attached to an audit. `filename` is a display name only; bytes live in the store by sha256."""

    __tablename__ = "audit_artifacts"
    __table_args__ = (UniqueConstraint("audit_id", "filename", name="uq_audit_artifacts_name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id"), index=True)
    filename: Mapped[str] = mapped_column(String(128))
    media_type: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]


class Event(Base):
    """Append-only log of every state change and operator action. Database triggers refuse UPDATE/DELETE."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))  # token name
    actor_role: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(64), index=True)  # e.g. "run.control", "version.registered"
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(index=True)
    before: Mapped[dict | None] = mapped_column(JSON)
    after: Mapped[dict | None] = mapped_column(JSON)


class ApiToken(Base):
    """An API token. Only sha256(token) is kept; the token itself is shown once when created."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a token in lists
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
