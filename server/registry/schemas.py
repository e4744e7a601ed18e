"""Request and response bodies of the REST API (pydantic). Unknown fields are refused, so a misspelt field
is a 422 that names it rather than a silently dropped value. Floats must be finite. Types are strict (a boolean
is not an integer, a string is not a number), and every integer that reaches a database column is bounded by
that column's range (`DB_INT_MAX`, the 32-bit INTEGER of PostgreSQL): an out-of-range value is a 422, not a
database error."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dblocks.shared.versions import VersionMeta

RunStatus = Literal["created", "running", "paused", "stopped", "finished", "failed"]
RunAction = Literal["start", "pause", "resume", "stop"]
ServiceStatus = Literal["running", "finished", "failed"]
# "evaluated": a round-level report, the assembled model's metrics after the round in `stats` (block_index 0,
# no cohort); the others say what happened to one block in the round
RoundStatus = Literal["completed", "skipped", "rerun", "failed", "evaluated"]
NodeStatus = Literal["pending", "approved", "revoked"]
Verdict = Literal["pass", "fail", "inconclusive"]
Role = Literal["admin", "operator", "researcher", "viewer", "service"]

DB_INT_MAX = 2**31 - 1  # INTEGER columns (ids, rounds, block indices, steps): 32-bit signed on PostgreSQL

Name = Field(min_length=1, max_length=200)
NodeId = Field(min_length=1, max_length=64)
SecAggIdentity = Field(
    default=None,
    pattern=r"^[0-9a-f]{64}$",
    description="the node's SecAgg identity key (Ed25519 public, 64 lowercase hex); enrolled once, never changed",
)


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: `items`, the `total` matching the filters, and the `limit`/`offset` used."""

    items: list[T]
    total: int
    limit: int
    offset: int


# ---- runs -------------------------------------------------------------------------------------------------
class RunCreate(In):
    task: str = Name
    num_blocks: int = Field(ge=1, le=1024)
    schedule: dict[str, Any] = Field(
        description="NoiseSchedule.to_dict(): num_blocks, p_mean, p_std, sigma_min, sigma_max, sigma_data, "
        "partition_kind, gamma"
    )
    num_rounds: int = Field(ge=1, le=1_000_000)
    dataset: dict[str, Any] = Field(
        default_factory=dict, description="what the data is (name, size, split); never the data"
    )
    secagg: dict[str, Any] = Field(default_factory=dict)
    dp: dict[str, Any] = Field(
        default_factory=dict,
        description="DP settings, e.g. target_epsilon, delta, clip_norm, noise_multiplier, accountant",
    )
    name: str | None = Field(default=None, max_length=200)
    created_by: str | None = Field(
        default=None, max_length=200, description="the person behind the request; default: the token's name"
    )


class BlockOut(Out):
    block_index: int
    owned_lo: float | None
    owned_hi: float | None
    train_lo: float | None
    train_hi: float | None
    param_count: int | None


class RunOut(Out):
    id: int
    name: str
    task: str
    dataset: dict[str, Any]
    num_blocks: int
    schedule: dict[str, Any]
    secagg: dict[str, Any]
    dp: dict[str, Any]
    num_rounds: int
    current_round: int
    status: RunStatus
    status_reason: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    blocks: list[BlockOut]


class RunSummary(Out):
    id: int
    name: str
    task: str
    num_blocks: int
    num_rounds: int
    current_round: int
    status: RunStatus
    status_reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime


class ControlState(Out):
    """What the federation server polls each round."""

    run_id: int
    status: RunStatus
    num_rounds: int
    current_round: int
    status_reason: str | None
    updated_at: datetime


class RunControl(In):
    action: RunAction | None = None
    num_rounds: int | None = Field(default=None, ge=1, le=1_000_000)
    reason: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _something(self) -> RunControl:
        if self.action is None and self.num_rounds is None:
            raise ValueError("give an action (start, pause, resume, stop), num_rounds, or both")
        return self


class RunStatusSet(In):
    status: ServiceStatus
    reason: str | None = Field(default=None, max_length=2000)


# ---- rounds -----------------------------------------------------------------------------------------------
class RoundReportIn(In):
    round: int = Field(ge=0, le=DB_INT_MAX)
    block_index: int = Field(ge=0, le=DB_INT_MAX)
    cohort: list[str] = Field(default_factory=list, max_length=10_000)
    status: RoundStatus
    reason: str | None = Field(default=None, max_length=2000)
    stats: dict[str, Any] = Field(default_factory=dict)


class RoundReportOut(Out):
    id: int
    run_id: int
    round: int
    block_index: int
    cohort: list[str]
    status: RoundStatus
    reason: str | None
    stats: dict[str, Any]
    created_by: str
    created_at: datetime


# ---- block versions (the record a version is registered with: dblocks.shared.versions.VersionMeta) ----------
class VersionMetaIn(VersionMeta):
    """VersionMeta as the registry accepts it: strict types and integers within the database's columns."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    round: int = Field(ge=0, le=DB_INT_MAX)
    parent_version_id: int | None = Field(default=None, ge=1, le=DB_INT_MAX)
    record_steps: int | None = Field(default=None, ge=0, le=DB_INT_MAX)


class BlockSpecIn(BaseModel):
    """The shape of `dblocks.shared.wire.BlockSpec` JSON, checked before the spec is built: an object with every
    field of the right type (numbers where numbers belong, finite intervals), so a malformed spec is a 422 that
    names the field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    task: str = Name
    block_index: int = Field(ge=0, le=DB_INT_MAX)
    num_blocks: int = Field(ge=1, le=1024)
    owned_interval: tuple[float, float]
    training_interval: tuple[float, float]
    arch: dict[str, Any]
    schedule: dict[str, Any]
    param_count: int = Field(ge=0, le=DB_INT_MAX)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format_version: int = Field(ge=0, le=DB_INT_MAX)


class VersionOut(Out):
    id: int
    run_id: int
    block_index: int
    version: int
    round: int
    parent_version_id: int | None
    cohort: list[str]
    owned_lo: float
    owned_hi: float
    train_lo: float
    train_hi: float
    param_count: int
    clip_norm: float | None
    noise_multiplier: float | None
    record_epsilon: float | None
    record_delta: float | None
    record_sample_rate: float | None
    record_steps: int | None
    client_epsilon: float | None
    client_delta: float | None
    accountant: str | None
    secagg_session: str | None
    metrics: dict[str, Any]
    spec_json: str
    sha256: str
    size_bytes: int
    weights_uri: str
    code_version: str | None
    created_by: str
    created_at: datetime


class VersionRegistered(VersionOut):
    created: bool = Field(
        description="false when this exact version (same run, block, round and sha256) was already registered"
    )


# ---- nodes ------------------------------------------------------------------------------------------------
class NodeCreate(In):
    display_name: str = Name
    organisation: str = Name
    public_key: str = Field(
        min_length=1, max_length=20_000, description="PEM SubjectPublicKeyInfo or an OpenSSH public key line"
    )
    fingerprint: str | None = Field(
        default=None, max_length=128, description="optional; if given it must match the key"
    )
    secagg_identity: str | None = SecAggIdentity


class NodeOut(Out):
    id: str
    display_name: str
    organisation: str
    public_key: str
    fingerprint: str
    secagg_identity: str | None
    status: NodeStatus
    status_reason: str | None
    blocks_trained: int
    info: dict[str, Any]
    created_at: datetime
    approved_at: datetime | None
    revoked_at: datetime | None
    last_seen_at: datetime | None


class NodeRegistered(NodeOut):
    created: bool


class NodeDecision(In):
    reason: str | None = Field(default=None, max_length=2000)
    secagg_identity: str | None = SecAggIdentity


class NodeSeen(In):
    info: dict[str, Any] = Field(
        default_factory=dict, description="self-reported facts: address, software version, ..."
    )


class NodePrivacyIn(In):
    run_id: int = Field(ge=1, le=DB_INT_MAX)
    block_index: int = Field(ge=0, le=DB_INT_MAX)
    round: int = Field(ge=0, le=DB_INT_MAX)
    epsilon: float = Field(
        ge=0,
        description="epsilon of this node's data composed over all its releases in the run "
        "(all rounds and blocks) up to `round`",
    )
    delta: float = Field(gt=0, lt=1)
    accountant: str = Field(min_length=1, max_length=64)
    sample_rate: float | None = Field(default=None, gt=0, le=1)
    steps: int | None = Field(default=None, ge=0, le=DB_INT_MAX)


class NodePrivacyOut(Out):
    id: int
    node_id: str
    run_id: int
    block_index: int
    round: int
    epsilon: float
    delta: float
    accountant: str
    sample_rate: float | None
    steps: int | None
    created_at: datetime


# ---- audits -----------------------------------------------------------------------------------------------
class AuditMeta(In):
    block_version_id: int = Field(ge=1, le=DB_INT_MAX)
    attack: str = Name
    observation_point: str = Name
    adversary: str = Name
    config: dict[str, Any] = Field(default_factory=dict)
    config_hash: str = Field(min_length=1, max_length=128)
    seeds: list[int] = Field(default_factory=list, max_length=100_000)
    metrics: dict[str, Any] = Field(default_factory=dict, description="metric -> value, with confidence intervals")
    controls: dict[str, Any] = Field(default_factory=dict, description="outcomes of the control experiments")
    verdict: Verdict


class ArtifactOut(Out):
    filename: str
    media_type: str
    sha256: str
    size_bytes: int


class AuditOut(Out):
    id: int
    block_version_id: int
    run_id: int
    block_index: int
    attack: str
    observation_point: str
    adversary: str
    config: dict[str, Any]
    config_hash: str
    seeds: list[int]
    metrics: dict[str, Any]
    controls: dict[str, Any]
    verdict: Verdict
    created_by: str
    created_at: datetime
    artifacts: list[ArtifactOut]


class LineageStep(BaseModel):
    version: VersionOut
    audits: list[AuditOut]


class Lineage(BaseModel):
    """A version and its ancestors (parent first), each with its cohort and the audits run on it."""

    version: VersionOut
    audits: list[AuditOut]
    ancestors: list[LineageStep]


# ---- events and tokens ------------------------------------------------------------------------------------
class EventOut(Out):
    id: int
    at: datetime
    actor: str
    actor_role: str
    kind: str
    subject_type: str
    subject_id: str
    run_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class TokenCreate(In):
    name: str = Name
    role: Role


class TokenOut(Out):
    id: int
    name: str
    role: Role
    prefix: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret; shown only in this response")


class WhoAmI(BaseModel):
    token_id: int
    name: str
    role: Role
