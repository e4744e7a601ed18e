"""Run configuration of a federation (one JSON file, written by `dbserver run new`, read by the ServerApp).

Units: `record_*` are the DP-SGD mechanism every company runs on its records (noise multiplier z in units of
the per-example clip C_rec, Poisson rate q, steps per round); `update_clip` is the client-level L2 clip C of
a block delta; `central_noise` z_c adds N(0, (z_c C / K)^2) to the mean of K aggregated deltas.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from dblocks.shared.versions import DPSettings


def round_lr(lr: float, r: int, rounds: int) -> float:
    """Company learning rate of round r of `rounds`: cosine from lr (round 1) down to lr / 10 (last round).
    Within a round the company keeps it constant."""
    frac = min(1.0, (r - 1) / max(1, rounds - 1))
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation per block cohort. mode "dblocks" (default): ours (dblocks.privacy.secagg: uint32
    masks, all blocks of a round share each exchange, threshold and graph chosen from the cohort size);
    "flower": Flower's SecAgg+ (legacy workflow), for comparison. threshold: Flower mode only, the fraction of
    the cohort needed to unmask. timeout: seconds a protocol stage waits for replies (training included).
    consistency (dblocks mode, default on): every survivor signs the server's survivor view before anyone reveals
    shares (one more exchange per round), so a server cannot show members different views; companies may
    require it (`dbclient join --require-consistency`). directory: the signed directory of enrolled SecAgg
    identities (written by the node sync of `dbserver start`), relayed to the companies, which pin it."""

    mode: Literal["dblocks", "flower"] = "dblocks"
    threshold: float = 0.6
    timeout: float = 600.0
    consistency: bool = True
    directory: str | None = None


@dataclass(frozen=True)
class RunConfig:
    run_id: str
    task: str = "mnist"  # preset name (dblocks.shared.presets)
    num_blocks: int = 4
    num_rounds: int = 3
    cohort_size: int = 3  # companies per block cohort
    min_cohort: int = 3  # below this a block's round is skipped (with the reason recorded)
    # record-level DP-SGD at each company
    record_noise: float = 1.0
    record_clip: float = 1.0
    record_sample_rate: float = 0.1
    record_steps: int = 20
    delta: float = 1e-5
    accountant: str = "prv"
    lr: float = 1e-3
    weight_decay: float = 0.0
    # client-level: clip of the whole block delta and central noise on the aggregate
    update_clip: float = 1.0
    central_noise: float = 0.0
    server_lr: float = 1.0
    # heavy-ball momentum on each block's released means across rounds (0: plain FedAvg step). Post-processing of
    # what is already private: no privacy cost. bench/dp_adapt.py: 0.6 gave +4.0 points on the shift validation
    # split over none; 0.9 overshot within 8 rounds
    server_momentum: float = 0.0
    # which parameters of a block the companies train (BlockTask.trainable; shared/fedmsg.py TRAINABLE)
    trainable: str = "all"
    # which blocks the run adapts (None: all). Under DP a company's budget buys the same number of steps whichever
    # block it trains, so spending it only where accuracy moves (the high-noise blocks that decide the class)
    # gives those blocks bigger cohorts -- less noise in their aggregate -- for the same epsilon; the others keep
    # the initial (e.g. pretrained) weights
    adapt_blocks: tuple[int, ...] | None = None
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    # where things go
    checkpoint_dir: str = "checkpoints"
    registry_url: str | None = None
    registry_token_file: str | None = None  # a 0600 file holding the registry token; run.json never holds a token
    init_model_dir: str | None = None  # pretrained blocks (e.g. on public data) to start from
    # the run's class list: names in label-index order, declared by the operator (`dbserver run new --classes`);
    # None: the initial model's saved schema, else the class indices "0".."K-1". It travels in every BlockTask
    # and every company maps its own labels through it (shared/schema.py `RunData`)
    classes: list[str] | None = None
    seed: int = 0
    ping_timeout: float = 60.0
    # the first round waits until this many companies are connected (at most `min_nodes_timeout` seconds; then it
    # starts with those there): a run can be submitted while companies are still joining. 0: start at once
    min_nodes: int = 0
    min_nodes_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.min_cohort < 2:
            raise ValueError("min_cohort must be >= 2: secure aggregation of one client reveals its update")
        if self.secagg.mode not in ("dblocks", "flower"):
            raise ValueError(f"secagg.mode {self.secagg.mode!r}: use 'dblocks' or 'flower'")
        if self.secagg.mode == "dblocks" and self.min_cohort < 3:
            raise ValueError(
                "min_cohort must be >= 3 with dblocks secure aggregation (SecAgg+ needs 3 members; "
                "with 2, the sum tells each member the other's update)"
            )
        if self.cohort_size < self.min_cohort:
            raise ValueError(f"cohort_size {self.cohort_size} < min_cohort {self.min_cohort}")
        if not 0 < self.record_sample_rate <= 1:
            raise ValueError("record_sample_rate must be in (0, 1]")
        if self.classes is not None:
            names = [str(c).strip() for c in self.classes]
            if len(names) < 2 or len(set(names)) != len(names) or not all(names):
                raise ValueError(f"classes must be at least two distinct non-empty names, got {self.classes[:20]}")
            object.__setattr__(self, "classes", names)
        from dblocks.shared.fedmsg import TRAINABLE

        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable {self.trainable!r}: use one of {', '.join(TRAINABLE)}")
        if not 0 <= self.server_momentum < 1:
            raise ValueError(f"server_momentum {self.server_momentum}: use a value in [0, 1)")
        if self.adapt_blocks is not None:
            object.__setattr__(self, "adapt_blocks", tuple(sorted({int(b) for b in self.adapt_blocks})))
            if not self.adapt_blocks or not all(0 <= b < self.num_blocks for b in self.adapt_blocks):
                raise ValueError(
                    f"adapt_blocks {list(self.adapt_blocks)}: give block indices in 0..{self.num_blocks - 1}"
                )

    @property
    def dp(self) -> DPSettings:
        """The run's DP settings as one record (what the registry keeps of the run and of each version)."""
        return DPSettings(**{f: getattr(self, f) for f in DPSettings.model_fields})

    @property
    def registry_token(self) -> str | None:
        """The registry token, read from `registry_token_file` (None without one)."""
        return Path(self.registry_token_file).read_text().strip() if self.registry_token_file else None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        d = json.loads(Path(path).read_text())
        d["secagg"] = SecAggConfig(**d.get("secagg", {}))
        unknown = d.keys() - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown run settings {sorted(unknown)}")
        return cls(**d)
