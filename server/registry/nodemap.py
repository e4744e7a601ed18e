"""Which company a cohort member is. The federation server names cohort members by their SuperLink (Flower) node
id, the number the SuperLink gave the company's node key when it was registered there; the registry names a
company by its registry node id (`node-` + 12 hex), under the display name given when it was approved. The node
sync (`dblocks.server.ops.nodesync`) writes each approved node's SuperLink node id into the registry node's
`info.superlink.node_id` when it registers the key with the SuperLink, so the registry can map one to the other.

`node_aliases` reads that mapping: every name a node may appear under in a cohort (its registry id and, once
synced, its SuperLink node id) -> its registry id. Cohorts are stored as the federation server sent them and
resolved when read, so a node synced after a round is still attributed that round.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Node


def superlink_node_id(info: Any) -> str | None:
    """The SuperLink node id the node sync recorded in a node's `info`, or None (not synced, or not a number)."""
    link = info.get("superlink") if isinstance(info, dict) else None
    value = link.get("node_id") if isinstance(link, dict) else None
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    return text if text.isdigit() else None


def node_aliases(session: Session) -> dict[str, str]:
    """{registry node id or SuperLink node id: registry node id} of every node. A registry id always maps to
    itself, even if another node's SuperLink id happened to be spelt the same."""
    rows: list[tuple[str, Any]] = [(r.id, r.info) for r in session.execute(select(Node.id, Node.info))]
    out: dict[str, str] = {}
    for node_id, info in rows:
        link = superlink_node_id(info)
        if link is not None:
            out[link] = node_id
    out.update({node_id: node_id for node_id, _ in rows})
    return out


def resolve(cohort: Iterable[str], aliases: dict[str, str]) -> list[str]:
    """The registry node ids of a cohort's members that the registry knows (each once, in cohort order)."""
    seen: dict[str, None] = {}
    for member in cohort:
        node_id = aliases.get(str(member))
        if node_id is not None:
            seen.setdefault(node_id)
    return list(seen)
