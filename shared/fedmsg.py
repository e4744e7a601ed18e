"""What travels between the federation server and a company in one round.

Server -> client: a `BlockTask` (flat config: which block, its BlockSpec, the DP-SGD mechanism and the
client-level clip) and the block's weights as arrays in `state_names` order.
Client -> server: the block update, i.e. delta = trained - received parameters, L2-clipped as a whole to
`update_clip`, as float32 arrays in `param_names` order. Nothing else about the client's data leaves: the
record-level mechanism (noise multiplier, sample rate, steps) is fixed by the server, so every company's
record-level epsilon follows from public settings.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class BlockTask:
    """One block round as the server asks it. Everything here is chosen by the server and known to it; none of
    it seeds the company's randomness (the Poisson sample and all noise are drawn from the company's own OS
    entropy, see client/trainer.py). Values are checked on construction (`validate`), so a task with a NaN,
    an Inf or an out-of-range value is refused with a ValueError before any accounting or training."""

    run_id: str
    round: int
    block_index: int
    attempt: int  # 0, or 1.. for re-runs of the same round (each attempt is a release and is accounted)
    spec_json: str
    noise_multiplier: float  # record-level DP-SGD noise, in units of max_grad_norm (0: no DP, infinite epsilon)
    max_grad_norm: float  # record-level per-example clip C_rec
    sample_rate: float  # Poisson sampling rate q of DP-SGD
    steps: int  # DP-SGD steps this round
    delta: float
    accountant: str
    lr: float
    weight_decay: float
    update_clip: float  # client-level L2 clip C of the whole block delta
    # which of the block's parameters DP-SGD trains (the others stay as received, their delta is 0): a name in
    # TRAINABLE. Fewer trained parameters, less DP noise in the update (privacy/dpsgd.py `trainable_names`)
    trainable: str = "all"
    # the run's data contract (shared/schema.py `RunData`), fixed by the server for the whole run: the class list
    # as a JSON list of names in label-index order (every company maps its labels through it; "" from an older
    # server) and the feature standardisation as JSON {"mean": [F], "std": [F], "source"} ("": features as stored)
    class_names: str = ""
    feature_stats: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Types and ranges of every field; raises ValueError naming the field. Numbers are normalised to
        plain int / float (what a Flower ConfigRecord carries)."""
        from dblocks.privacy.accounting import ACCOUNTANTS

        for name, kind in (("run_id", str), ("spec_json", str), ("accountant", str)):
            if not isinstance(getattr(self, name), kind) or not getattr(self, name):
                raise ValueError(f"block task: {name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"block task: {name} must be an integer >= 0, got {v!r}")
            object.__setattr__(self, name, int(v))
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"block task: {name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("max_grad_norm", "sample_rate", "update_clip"):
            v = getattr(self, name)
            if v <= 0:
                raise ValueError(f"block task: {name} must be > 0, got {v!r}")
        if self.steps < 1:
            raise ValueError(f"block task: steps must be >= 1, got {self.steps!r}")
        if self.lr < 0 or self.weight_decay < 0:
            raise ValueError(f"block task: lr and weight_decay must be >= 0, got {self.lr!r}, {self.weight_decay!r}")
        if self.noise_multiplier < 0:
            raise ValueError(f"block task: noise_multiplier must be >= 0 (0: no DP), got {self.noise_multiplier!r}")
        if self.sample_rate > 1:
            raise ValueError(f"block task: sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"block task: delta must be in (0, 1), got {self.delta!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"block task: accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"block task: trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        from .schema import RunData

        RunData.from_task(self.class_names, self.feature_stats)  # ValueError on a malformed class list or stats

    def to_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, cfg: dict) -> BlockTask:
        """The task from a Flower ConfigRecord; missing fields, wrong types and out-of-range values raise
        ValueError. Keys this version does not know (an older server's `seed`) are ignored: nothing the server
        sends may choose the company's randomness."""
        names = {f.name for f in fields(cls)}
        # an older server sends no `trainable` (all parameters), class list or feature statistics
        missing = names - cfg.keys() - {"trainable", "class_names", "feature_stats"}
        if missing:
            raise ValueError(f"block task is missing {sorted(missing)}: server and client versions differ?")
        return cls(**{k: cfg[k] for k in names if k in cfg})

    @property
    def mechanism(self):
        """The record-level mechanism this task runs (a `MechanismStep`)."""
        from dblocks.privacy.accounting import MechanismStep

        return MechanismStep(self.noise_multiplier, self.sample_rate, self.steps)

    @property
    def spec(self) -> dict:
        return json.loads(self.spec_json)


# trainable parameter subsets of a block (privacy/dpsgd.py `trainable_names` says which names each selects)
TRAINABLE = ("all", "bias", "head", "bias+head", "ada", "bias+ada", "input", "input+bias", "input+bias+head")
_INT_FIELDS = ("round", "block_index", "attempt", "steps")
_FLOAT_FIELDS = ("noise_multiplier", "max_grad_norm", "sample_rate", "delta", "lr", "weight_decay", "update_clip")


def state_names(module: nn.Module) -> list[str]:
    """Order of the arrays that carry a block's weights (parameters and persistent buffers)."""
    return list(module.state_dict().keys())


def param_names(module: nn.Module) -> list[str]:
    """Order of the arrays that carry a block update (trainable parameters only)."""
    return [n for n, _ in module.named_parameters()]


def arrays_to_state(module: nn.Module, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    names = state_names(module)
    if len(arrays) != len(names):
        raise ValueError(f"expected {len(names)} weight arrays, got {len(arrays)}")
    return {n: torch.from_numpy(np.asarray(a, dtype=np.float32).copy()) for n, a in zip(names, arrays)}
