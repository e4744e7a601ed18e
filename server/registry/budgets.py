"""Privacy budgets per block and per node, read from block versions and node privacy records.

Per block: the accountant's epsilon of the block's newest version (record level and client level), and its
history over rounds. Per node: for each block the newest cumulative epsilon of that node's data; a node that
trained several blocks of one run on the same data has spent at most the sum over those blocks (basic
composition: epsilons add, deltas add), which is the total shown. It is an upper bound, never an estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import select
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
    per_block: dict[int, dict] = field(default_factory=dict)  # block -> {epsilon, delta, round, accountant}
    epsilon_total: float = 0.0
    delta_total: float = 0.0


def block_budgets(session: Session, run_id: int, num_blocks: int) -> list[BlockBudget]:
    rows = session.execute(
        select(BlockVersion.block_index, BlockVersion.round, BlockVersion.version, BlockVersion.record_epsilon,
               BlockVersion.record_delta, BlockVersion.client_epsilon, BlockVersion.client_delta, BlockVersion.accountant)
        .where(BlockVersion.run_id == run_id).order_by(BlockVersion.block_index, BlockVersion.version)
    ).all()
    out = {b: BlockBudget(block_index=b) for b in range(num_blocks)}
    for r in rows:
        b = out.setdefault(r.block_index, BlockBudget(block_index=r.block_index))
        b.round, b.version, b.record_epsilon, b.record_delta = r.round, r.version, r.record_epsilon, r.record_delta
        b.client_epsilon, b.client_delta, b.accountant = r.client_epsilon, r.client_delta, r.accountant
        b.history.append({"round": r.round, "record_epsilon": r.record_epsilon, "client_epsilon": r.client_epsilon})
    return [out[k] for k in sorted(out)]


def node_budgets(session: Session, *, run_id: int | None = None, node_id: str | None = None) -> dict[tuple[str, int], NodeBudget]:
    """(node id, run id) -> NodeBudget, for one run, one node, or both."""
    q = select(NodePrivacy).order_by(NodePrivacy.id)
    if run_id is not None:
        q = q.where(NodePrivacy.run_id == run_id)
    if node_id is not None:
        q = q.where(NodePrivacy.node_id == node_id)
    latest: dict[tuple[str, int, int], NodePrivacy] = {}
    for rec in session.execute(q).scalars():
        key = (rec.node_id, rec.run_id, rec.block_index)
        if key not in latest or (rec.round, rec.id) >= (latest[key].round, latest[key].id):
            latest[key] = rec
    names = dict(session.execute(select(Node.id, Node.display_name).where(Node.id.in_({k[0] for k in latest}))).all()) if latest else {}
    out: dict[tuple[str, int], NodeBudget] = {}
    for (nid, rid, block), rec in sorted(latest.items()):
        nb = out.setdefault((nid, rid), NodeBudget(node_id=nid, run_id=rid, display_name=names.get(nid)))
        nb.per_block[block] = {"epsilon": rec.epsilon, "delta": rec.delta, "round": rec.round, "accountant": rec.accountant,
                               "sample_rate": rec.sample_rate, "steps": rec.steps}
        nb.epsilon_total += rec.epsilon
        nb.delta_total += rec.delta
    return out


def run_privacy(session: Session, run_id: int, num_blocks: int) -> dict:
    """JSON-ready privacy summary of a run."""
    return {
        "run_id": run_id,
        "composition": "node totals are sums over blocks (basic composition): an upper bound",
        "blocks": [asdict(b) for b in block_budgets(session, run_id, num_blocks)],
        "nodes": [asdict(n) for n in node_budgets(session, run_id=run_id).values()],
    }
