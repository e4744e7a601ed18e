"""The company's privacy ledger: every DP-SGD release made from its records, composed by an accountant.

One JSON file per data set (persisted atomically, survives restarts). An entry is one block update the
company computed: (run, round, block) and the subsampled-Gaussian mechanism it ran (noise multiplier,
sample rate, steps). The record-level epsilon at delta is the composition of all entries — training
several blocks on the same records composes across blocks. `check` refuses work whose composition would
exceed the budget, before any record is touched.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dblocks.privacy.accounting import MechanismStep  # light: the accountant itself is imported on use


class BudgetExceeded(RuntimeError):
    """Training the requested block would spend more than the company's epsilon budget."""


@dataclass(frozen=True)
class LedgerEntry:
    run_id: str
    round: int
    block_index: int
    attempt: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    examples: int
    epsilon_after: float
    accountant: str
    time: float

    @property
    def mechanism(self) -> MechanismStep:
        return MechanismStep(self.noise_multiplier, self.sample_rate, self.steps)


class PrivacyLedger:
    """Persisted list of LedgerEntry for one data set, with an epsilon budget at a fixed delta."""

    def __init__(self, path: str | os.PathLike, budget: float, delta: float = 1e-5, accountant: str = "prv") -> None:
        self.path, self.budget, self.delta, self.accountant = Path(path), budget, delta, accountant
        self.entries: list[LedgerEntry] = []
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
                self.entries = [LedgerEntry(**e) for e in raw["entries"]]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{self.path}: privacy ledger is corrupt ({e}); restore it from backup — "
                                 "never delete it, it is the record of what was spent") from e

    def spent(self, extra: list[MechanismStep] | None = None) -> float:
        """Record-level epsilon at self.delta of everything recorded (plus `extra`)."""
        from dblocks.privacy.accounting import epsilon

        return epsilon([e.mechanism for e in self.entries] + list(extra or []), self.delta, self.accountant)

    def recorded_spent(self) -> float:
        """The epsilon stored with the newest entry (computed when it was recorded; no accountant run)."""
        return self.entries[-1].epsilon_after if self.entries else 0.0

    def seen(self, run_id: str, round: int, block_index: int, attempt: int) -> LedgerEntry | None:
        key = (run_id, round, block_index, attempt)
        return next((e for e in self.entries if (e.run_id, e.round, e.block_index, e.attempt) == key), None)

    def check(self, step: MechanismStep, delta: float) -> float:
        """The epsilon after `step`; raises BudgetExceeded if it would pass the budget."""
        if delta > self.delta:
            raise BudgetExceeded(f"the run asks for delta={delta:g} but this company accounts at delta={self.delta:g}")
        after = self.spent([step])
        if after > self.budget:
            raise BudgetExceeded(
                f"this update would bring record-level epsilon to {after:.2f} (delta={self.delta:g}), over the budget "
                f"{self.budget:g}; {self.spent():.2f} is already spent. Raise --epsilon-budget or leave the run."
            )
        return after

    def record(self, run_id: str, round: int, block_index: int, attempt: int, step: MechanismStep, examples: int,
               epsilon_after: float | None = None) -> LedgerEntry:
        """Append a release; `epsilon_after` is the value `check` returned for the same step (saves a recount)."""
        after = self.spent([step]) if epsilon_after is None else epsilon_after
        entry = LedgerEntry(run_id, round, block_index, attempt, step.noise_multiplier, step.sample_rate, step.steps,
                            self.delta, examples, after, self.accountant, time.time())
        self.entries.append(entry)
        self._save()
        return entry

    def summary(self) -> dict:
        from dblocks.privacy.accounting import epsilon

        per_block: dict[int, list[MechanismStep]] = {}
        for e in self.entries:
            per_block.setdefault(e.block_index, []).append(e.mechanism)
        return {
            "budget": self.budget, "delta": self.delta, "accountant": self.accountant, "spent": self.spent(),
            "per_block": {b: epsilon(h, self.delta, self.accountant) for b, h in sorted(per_block.items())},
            "updates": len(self.entries),
        }

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"budget": self.budget, "delta": self.delta, "accountant": self.accountant,
                                   "entries": [asdict(e) for e in self.entries]}, indent=1))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
