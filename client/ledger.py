"""The company's privacy ledger: every DP-SGD release made from its records, composed by an accountant.

One JSON file per data set (persisted atomically, survives restarts). An entry is one block update the
company computed: (run, round, block, attempt) and the subsampled-Gaussian mechanism it ran (noise multiplier,
sample rate, steps). The record-level epsilon at delta is the composition of all entries — training
several blocks on the same records composes across blocks.

Transactions. Flower starts one ClientApp process per message, so several tasks can run at once against the
same ledger. Every change is one transaction under an exclusive lock (fcntl.flock on `<ledger>.lock` beside
the file): re-read the file, check, write a temporary file, fsync, rename over the ledger, fsync the folder,
unlock. A task makes two:

    reserve   before any record is used: refuse a replayed (run, round, block, attempt), refuse if the
              composition of everything recorded or reserved plus this task would pass the budget; else
              write the entry with status "reserved" — from now on it counts toward the budget
    settle    after training: the same entry becomes "released"

Failures. A reservation is never given back. Everything that can be checked without the records (the weights'
sha256, the task's values, the memory the block needs, the budget, replay) is checked before reserving, so a
task that fails after its reservation failed while or after DP-SGD used the records, and what it computed may
have been observed (an error message, timing, a partial upload): it stays accounted. A crash leaves the entry
"reserved", which counts: conservative, never an underestimate.

Key. The ledger of a data set is found by a fingerprint of its content (`data_fingerprint`: sha256 of the
file's bytes, or of a folder's sorted relative paths and bytes), not by its path, so a copy of the same file
under another name composes into the same budget. Any edit of the bytes gives a new fingerprint: a company
that edits its data and keeps training on the same people should keep spending from the old ledger
(`PrivacyLedger` on its path).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dblocks.privacy.accounting import MechanismStep  # light: the accountant itself is imported on use

RESERVED, RELEASED = "reserved", "released"


def data_fingerprint(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """sha256 (hex) of a data set's content, streamed: of a file, its bytes; of a folder (e.g. images), for each
    file below it in sorted order its relative path, its size and its bytes. Independent of where it lies."""
    path = Path(path)
    h = hashlib.sha256()

    def feed(f: Path) -> None:
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)

    if path.is_dir():
        for f in sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()):
            rel = f.relative_to(path).as_posix().encode()
            h.update(len(rel).to_bytes(8, "big") + rel + f.stat().st_size.to_bytes(8, "big"))
            feed(f)
    else:
        feed(path)
    return h.hexdigest()


class BudgetExceeded(RuntimeError):
    """Training the requested block would spend more than the company's epsilon budget."""


class ReplayedTask(RuntimeError):
    """The (run, round, block, attempt) was already reserved here: training it again would spend twice."""


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
    status: str = RELEASED  # RESERVED from `reserve` until `settle` (a crash leaves it reserved: still counted)

    @property
    def key(self) -> tuple[str, int, int, int]:
        return self.run_id, self.round, self.block_index, self.attempt

    @property
    def mechanism(self) -> MechanismStep:
        return MechanismStep(self.noise_multiplier, self.sample_rate, self.steps)


class PrivacyLedger:
    """Persisted list of LedgerEntry for one data set, with an epsilon budget at a fixed delta. `entries` is the
    file's content as of the last read (construction or this object's last transaction)."""

    def __init__(self, path: str | os.PathLike, budget: float, delta: float = 1e-5, accountant: str = "prv") -> None:
        self.path, self.budget, self.delta, self.accountant = Path(path), budget, delta, accountant
        self.entries: list[LedgerEntry] = self._read()

    def spent(self, extra: list[MechanismStep] | None = None) -> float:
        """Record-level epsilon at self.delta of every entry, reserved or released (plus `extra`)."""
        from dblocks.privacy.accounting import epsilon

        return epsilon([e.mechanism for e in self.entries] + list(extra or []), self.delta, self.accountant)

    def recorded_spent(self) -> float:
        """The epsilon stored with the newest entry (computed when it was reserved; no accountant run)."""
        return self.entries[-1].epsilon_after if self.entries else 0.0

    def seen(self, run_id: str, round: int, block_index: int, attempt: int) -> LedgerEntry | None:
        key = (run_id, round, block_index, attempt)
        return next((e for e in self.entries if e.key == key), None)

    def check(self, step: MechanismStep, delta: float) -> float:
        """The epsilon after `step` given `entries`; raises BudgetExceeded if it would pass the budget. A preview:
        only `reserve` decides, under the lock."""
        if delta > self.delta:
            raise BudgetExceeded(f"the run asks for delta={delta:g} but this company accounts at delta={self.delta:g}")
        after = self.spent([step])
        if after > self.budget:
            spent = self.spent()
            raise BudgetExceeded(
                f"record-level epsilon spent {spent:.2f}; the next task would cost {after - spent:.2f} more, bringing "
                f"it to {after:.2f} (delta={self.delta:g}), over the budget {self.budget:g}. Raise --epsilon-budget "
                "or leave the run."
            )
        return after

    def reserve(
        self, run_id: str, round: int, block_index: int, attempt: int, step: MechanismStep, delta: float, examples: int
    ) -> LedgerEntry:
        """One transaction: refuse a replay (ReplayedTask) or a step over the budget (BudgetExceeded), else write
        the entry as reserved. Call before any record is used; the reservation counts from now on."""
        with self._transaction():
            if self.seen(run_id, round, block_index, attempt):
                raise ReplayedTask(
                    f"round {round} (attempt {attempt}) of block {block_index} of run {run_id} was already trained "
                    "here; a replayed task is refused (it would spend privacy budget twice)"
                )
            after = self.check(step, delta)
            entry = LedgerEntry(
                run_id,
                round,
                block_index,
                attempt,
                step.noise_multiplier,
                step.sample_rate,
                step.steps,
                self.delta,
                examples,
                after,
                self.accountant,
                time.time(),
                RESERVED,
            )
            self.entries.append(entry)
            self._write()
        return entry

    def settle(self, reservation: LedgerEntry) -> LedgerEntry:
        """One transaction: the reserved entry becomes released (the update was computed and may be sent)."""
        with self._transaction():
            i = next((i for i, e in enumerate(self.entries) if e.key == reservation.key), None)
            if i is None:
                raise ValueError(f"{self.path}: no entry for {reservation.key} to settle; was the ledger replaced?")
            self.entries[i] = replace(self.entries[i], status=RELEASED)
            self._write()
        return self.entries[i]

    def summary(self) -> dict:
        from dblocks.privacy.accounting import epsilon

        per_block: dict[int, list[MechanismStep]] = {}
        for e in self.entries:
            per_block.setdefault(e.block_index, []).append(e.mechanism)
        return {
            "budget": self.budget,
            "delta": self.delta,
            "accountant": self.accountant,
            "spent": self.spent(),
            "per_block": {b: epsilon(h, self.delta, self.accountant) for b, h in sorted(per_block.items())},
            "updates": len(self.entries),
            "reserved": sum(e.status == RESERVED for e in self.entries),
        }

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Hold the exclusive lock, with `entries` re-read from the file, for one read-check-write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self.entries = self._read()
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read(self) -> list[LedgerEntry]:
        if not self.path.exists():
            return []
        try:
            raw = json.loads(self.path.read_text())
            return [LedgerEntry(**e) for e in raw["entries"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{self.path}: privacy ledger is corrupt ({e}); restore it from backup — "
                "never delete it, it is the record of what was spent"
            ) from e

    def _write(self) -> None:
        """Atomic and durable: temporary file, fsync, rename, fsync the folder. Only inside `_transaction`."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(
                json.dumps(
                    {
                        "budget": self.budget,
                        "delta": self.delta,
                        "accountant": self.accountant,
                        "entries": [asdict(e) for e in self.entries],
                    },
                    indent=1,
                )
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        d = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(d)
        finally:
            os.close(d)
