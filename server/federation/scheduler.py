"""Which companies train which block this round.

Round-robin: each block gets a cohort of distinct nodes (a node trains at most one block per round). With N
live nodes, m = min(B, N // min_cohort) blocks get a cohort this round, starting at block (round mod B) so that
short-handed rounds rotate over the blocks; the (shuffled by round) nodes are dealt to those blocks in turn, up
to cohort_size each. Over rounds every node visits every block, and every block gets a cohort every round when
N >= B * min_cohort. A block that cannot get `min_cohort` nodes gets none this round, and the reason says so.
`blocks` restricts the run to a subset (RunConfig.adapt_blocks: adapt only the blocks where accuracy moves and
keep the others as initialised); the rotation and the dealing then run over that subset only.
Memory is the company's own check: a task whose block would need more than its `--memory-limit` is refused
there (client/memory.py), which makes the company a dropout of that block's round.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    memory_mb: float = float("inf")  # what the company allows training to use
    budget_left: float = float("inf")  # record-level epsilon it can still spend


@dataclass
class Assignment:
    cohorts: dict[int, list[int]]  # block -> node ids
    skipped: dict[int, str]  # block -> reason


def assign(
    nodes: list[NodeInfo],
    num_blocks: int,
    round: int,
    cohort_size: int,
    min_cohort: int,
    seed: int = 0,
    blocks: Sequence[int] | None = None,
) -> Assignment:
    trained = sorted(set(range(num_blocks) if blocks is None else blocks))
    if not trained or not all(0 <= b < num_blocks for b in trained):
        raise ValueError(f"blocks to train {list(trained)}: each must be in 0..{num_blocks - 1}")
    live = sorted(nodes, key=lambda n: n.node_id)
    random.Random(seed * 100_003 + round).shuffle(live)
    cohorts: dict[int, list[int]] = {b: [] for b in trained}
    k = len(trained)
    served = [trained[(round + j) % k] for j in range(min(k, len(live) // min_cohort))]
    for i, n in enumerate(live):
        if served and len(cohorts[b := served[i % len(served)]]) < cohort_size:
            cohorts[b].append(n.node_id)
    skipped = {}
    for b, c in cohorts.items():
        if len(c) < min_cohort:
            skipped[b] = (
                f"only {len(c)} node(s) available for block {b} ({len(live)} live in total), "
                f"fewer than the minimum cohort of {min_cohort}"
            )
            cohorts[b] = []
    return Assignment({b: c for b, c in cohorts.items() if c}, skipped)
