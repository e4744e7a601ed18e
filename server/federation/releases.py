"""Which company took part in which release of this run: what the server needs to state composed epsilons.

Each task sent is written here *before* it is sent (a crash afterwards over-counts, never under-counts), and
marked published when the aggregate that holds the company's delta is released with central noise z_c. The
log lives next to the checkpoints (`releases.json`, rewritten atomically) so that a restarted server keeps
composing over the releases of its earlier sessions.

Epsilons come from `dblocks.privacy.composition` (the run's accountant over all rounds and blocks); they are
the server's count, an upper bound of what each company's own ledger records for this run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from dblocks.privacy.accounting import MechanismStep
from dblocks.privacy.composition import NodeEpsilon, NodeRelease, compose_node_epsilon


class ReleaseLog:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.by_node: dict[int, list[NodeRelease]] = {}
        self._cache: dict[tuple, NodeEpsilon] = {}
        self._marginal_cache: dict[tuple, float] = {}
        if path is not None and path.exists():
            try:
                for node, rows in json.loads(path.read_text()).items():
                    self.by_node[int(node)] = [
                        NodeRelease(
                            r["round"], r["block"], r["attempt"], MechanismStep(**r["record"]), r["central_noise"]
                        )
                        for r in rows
                    ]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path} is corrupt ({type(e).__name__}: {e}); without it the epsilons this "
                    "server states would leave out earlier releases: restore it from a backup"
                ) from None

    def trained(self, round: int, block: int, attempt: int, nodes: list[int], record: MechanismStep) -> None:
        """The task of (round, block, attempt) with DP-SGD mechanism `record` is about to go to `nodes`."""
        for n in nodes:
            self.by_node.setdefault(int(n), []).append(NodeRelease(round, block, attempt, record))
        self._save()

    def published(self, round: int, block: int, nodes: list[int], central_noise: float) -> None:
        """The aggregate of (round, block) holding the deltas of `nodes` was released with noise multiplier z_c
        (the newest attempt of that block in that round is the one released)."""
        for n in nodes:
            rows = self.by_node.get(int(n), [])
            i = max(
                (i for i, r in enumerate(rows) if (r.round, r.block) == (round, block)),
                key=lambda i: rows[i].attempt,
                default=None,
            )
            if i is None:
                raise ValueError(f"node {n} has no task of round {round} block {block} in the release log")
            r = rows[i]
            rows[i] = NodeRelease(r.round, r.block, r.attempt, r.record, central_noise)
        self._save()

    def composed(self, node: int, delta: float, accountant: str) -> NodeEpsilon:
        """The node's epsilons composed over all its releases so far (cached per distinct history)."""
        rows = self.by_node.get(int(node), [])
        key = (
            tuple(
                sorted(
                    (
                        r.record.noise_multiplier,
                        r.record.sample_rate,
                        r.record.steps,
                        -1.0 if r.central_noise is None else r.central_noise,
                    )
                    for r in rows
                )
            ),
            delta,
            accountant,
        )
        if key not in self._cache:
            self._cache[key] = compose_node_epsilon(rows, delta, accountant)
        return self._cache[key]

    def marginal_record_epsilon(self, node: int, step: MechanismStep, delta: float, accountant: str) -> float:
        """What one more release of `step` adds to the node's record-level epsilon over its releases in this run:
        eps(history + step) - eps(history). Composition is sublinear, so this is below the step's own epsilon
        once the node has trained; the company's ledger, which also holds its other runs, decides for real."""
        rows = self.by_node.get(int(node), [])
        key = (
            "marginal",
            tuple(sorted((r.record.noise_multiplier, r.record.sample_rate, r.record.steps) for r in rows)),
            step,
            delta,
            accountant,
        )
        if key not in self._marginal_cache:
            from dblocks.privacy.accounting import epsilon

            history = [r.record for r in rows]
            before = epsilon(history, delta, accountant) if history else 0.0
            self._marginal_cache[key] = epsilon(history + [step], delta, accountant) - before
        return self._marginal_cache[key]

    def _save(self) -> None:
        if self.path is None:
            return
        data = {str(n): [{**asdict(r), "record": r.record.to_dict()} for r in rows] for n, rows in self.by_node.items()}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)
