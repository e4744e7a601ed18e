"""Privacy budgets per block and per node, read from block versions and node privacy records.

Per node (company) and run: the federation server records, after each round the node took part in, its
record-level epsilon composed with the run's accountant over ALL its releases in the run so far (every round
and every block: one data set per company per run), with `block_index` the block of its newest release. The
newest record (highest id) is therefore the node's total for the run; `per_block` keeps, per block, the newest
record written after a release of that block. Nothing is summed: composition is the accountant's. A company
that uses the same data in several runs composes across runs in its own ledger, which the registry never sees.

Per block: the epsilons of the block's newest version (the largest among its cohort of each company's composed
epsilon, record and client level, with the accountant named), and its history over rounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import BlockVersion, Node, NodePrivacy


@dataclass
class BlockBudget:
    block_index: int
    round: int | None = None
    version: int | None = None
    record_epsilon: float | None = None
    record_delta: float | None = None
    client_epsilon: float | None = None
    client_delta: float | None = None
    accountant: str | None = None
    history: list[dict] = field(default_factory=list)  # [{round, record_epsilon, client_epsilon}] oldest first


@dataclass
class NodeBudget:
    node_id: str
    run_id: int
    display_name: str | None
    per_block: dict[int, dict] = field(default_factory=dict)  # block -> newest {epsilon, delta, round, accountant, ...}
    epsilon_total: float = 0.0  # composed over all the node's releases in the run (its newest record)
    delta_total: float = 0.0  # the delta of that epsilon
    accountant: str | None = None  # the accountant that composed it
    round: int | None = None  # the round it is current to


def block_budgets(session: Session, run_id: int, num_blocks: int) -> list[BlockBudget]:
    rows = session.execute(
        select(
            BlockVersion.block_index,
            BlockVersion.round,
            BlockVersion.version,
            BlockVersion.record_epsilon,
            BlockVersion.record_delta,
            BlockVersion.client_epsilon,
            BlockVersion.client_delta,
            BlockVersion.accountant,
        )
        .where(BlockVersion.run_id == run_id)
        .order_by(BlockVersion.block_index, BlockVersion.version)
    ).all()
    out = {b: BlockBudget(block_index=b) for b in range(num_blocks)}
    for r in rows:
        b = out.setdefault(r.block_index, BlockBudget(block_index=r.block_index))
        b.round, b.version, b.record_epsilon, b.record_delta = r.round, r.version, r.record_epsilon, r.record_delta
        b.client_epsilon, b.client_delta, b.accountant = r.client_epsilon, r.client_delta, r.accountant
        b.history.append({"round": r.round, "record_epsilon": r.record_epsilon, "client_epsilon": r.client_epsilon})
    return [out[k] for k in sorted(out)]


def node_budgets(
    session: Session, *, run_id: int | None = None, node_id: str | None = None
) -> dict[tuple[str, int], NodeBudget]:
    """(node id, run id) -> NodeBudget, for one run, one node, or both. Records are composed totals of the run
    so far: the newest record of (node, run) is its total; per block, the newest record of that block."""
    newest = select(func.max(NodePrivacy.id)).group_by(NodePrivacy.node_id, NodePrivacy.run_id, NodePrivacy.block_index)
    if run_id is not None:
        newest = newest.where(NodePrivacy.run_id == run_id)
    if node_id is not None:
        newest = newest.where(NodePrivacy.node_id == node_id)
    records = (
        session.execute(
            select(NodePrivacy)
            .where(NodePrivacy.id.in_(newest))
            .order_by(NodePrivacy.node_id, NodePrivacy.run_id, NodePrivacy.block_index)
        )
        .scalars()
        .all()
    )
    names = (
        dict(session.execute(select(Node.id, Node.display_name).where(Node.id.in_({r.node_id for r in records}))).all())
        if records
        else {}
    )
    out: dict[tuple[str, int], NodeBudget] = {}
    newest_id: dict[tuple[str, int], int] = {}
    for rec in records:
        key = (rec.node_id, rec.run_id)
        nb = out.setdefault(
            key, NodeBudget(node_id=rec.node_id, run_id=rec.run_id, display_name=names.get(rec.node_id))
        )
        nb.per_block[rec.block_index] = {
            "epsilon": rec.epsilon,
            "delta": rec.delta,
            "round": rec.round,
            "accountant": rec.accountant,
            "sample_rate": rec.sample_rate,
            "steps": rec.steps,
        }
        if rec.id > newest_id.get(key, -1):
            newest_id[key] = rec.id
            nb.epsilon_total, nb.delta_total, nb.accountant, nb.round = (
                rec.epsilon,
                rec.delta,
                rec.accountant,
                rec.round,
            )
    return out


def run_privacy(session: Session, run_id: int, num_blocks: int) -> dict:
    """JSON-ready privacy summary of a run."""
    return {
        "run_id": run_id,
        "composition": (
            "node totals: each node's record-level epsilon composed with the run's accountant over all its "
            "releases in this run (all rounds and blocks); block epsilons: the largest such composed epsilon "
            "among the block version's cohort"
        ),
        "blocks": [asdict(b) for b in block_budgets(session, run_id, num_blocks)],
        "nodes": [asdict(n) for n in node_budgets(session, run_id=run_id).values()],
    }
