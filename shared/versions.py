"""The record of one block version, as the ServerApp releases it, `RegistryClient` sends it and the registry's
route stores it: one typed class on all three (`VersionMeta`), importable without the server.

A version's privacy record has two parts. The settings of the mechanisms it was released under are the run's
`DPSettings` (the `RunConfig` fields of the same names): record-level DP-SGD at every company (noise
multiplier `record_noise` in units of the per-example clip `record_clip`, Poisson rate `record_sample_rate`,
`record_steps` per round) and the client-level release (L2 clip C = `update_clip` of a block delta, central
noise multiplier z_c = `central_noise`, std z_c C / K on the mean of K), with `delta` and the `accountant`.
The results are the epsilons at `delta`: `record_epsilon` and `client_epsilon`, each the largest over the
cohort of a company's epsilon composed over its releases in the run.

On the wire and in the registry's table a version is flat (one column per field, the names below); an
epsilon is refused without the accounting that gives it meaning. Floats must be finite; unknown fields are
refused.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DPSettings(BaseModel):
    """The DP settings of a run (`RunConfig` field names and units; see the module doc)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    record_noise: float = Field(ge=0)
    record_clip: float = Field(gt=0)
    record_sample_rate: float = Field(gt=0, le=1)
    record_steps: int = Field(ge=0)
    update_clip: float = Field(gt=0)
    central_noise: float = Field(ge=0)
    delta: float = Field(gt=0, lt=1)
    accountant: str = Field(min_length=1, max_length=64)


class VersionMeta(BaseModel):
    """Everything about a block version except its spec and weights (sent alongside, multipart)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    round: int = Field(ge=0)
    parent_version_id: int | None = None
    cohort: list[str] = Field(default_factory=list, max_length=10_000)
    clip_norm: float | None = Field(default=None, gt=0)  # DPSettings.update_clip
    noise_multiplier: float | None = Field(default=None, ge=0)  # DPSettings.central_noise
    record_epsilon: float | None = Field(default=None, ge=0)
    record_delta: float | None = Field(default=None, gt=0, lt=1)
    record_sample_rate: float | None = Field(default=None, gt=0, le=1)
    record_steps: int | None = Field(default=None, ge=0)
    client_epsilon: float | None = Field(default=None, ge=0)
    client_delta: float | None = Field(default=None, gt=0, lt=1)
    accountant: str | None = Field(default=None, max_length=64)
    secagg_session: str | None = Field(default=None, max_length=200)
    metrics: dict[str, Any] = Field(default_factory=dict)
    code_version: str | None = Field(default=None, max_length=200)

    @classmethod
    def released(
        cls, round: int, dp: DPSettings, *, record_epsilon: float, client_epsilon: float | None, **fields: Any
    ) -> VersionMeta:
        """A version released under `dp` with its epsilons (client_epsilon None: infinite, no central noise);
        `fields`: the rest (parent_version_id, cohort, metrics, code_version, secagg_session)."""
        return cls(
            round=round,
            clip_norm=dp.update_clip,
            noise_multiplier=dp.central_noise,
            record_epsilon=record_epsilon,
            record_delta=dp.delta,
            record_sample_rate=dp.record_sample_rate,
            record_steps=dp.record_steps,
            client_epsilon=client_epsilon,
            client_delta=dp.delta,
            accountant=dp.accountant,
            **fields,
        )

    @model_validator(mode="after")
    def _epsilon_is_accounted(self) -> VersionMeta:
        """An epsilon means nothing without its delta, sample rate, steps and accountant."""
        if self.record_epsilon is not None:
            missing = [
                k
                for k in ("record_delta", "record_sample_rate", "record_steps", "accountant")
                if getattr(self, k) is None
            ]
            if missing:
                raise ValueError(
                    f"record_epsilon needs {', '.join(missing)} too (an epsilon is only meaningful with its accounting)"
                )
        if self.client_epsilon is not None:
            missing = [k for k in ("client_delta", "accountant") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"client_epsilon needs {', '.join(missing)} too")
        return self
