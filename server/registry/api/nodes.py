"""Nodes (companies' SuperNodes): registration, approval and revocation, heartbeats, privacy spent."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

from fastapi import APIRouter, Depends, HTTPException, Response
from sqlalchemy import select

from .. import events
from ..auth import ALL_ROLES, OPERATORS, RUN_CREATORS, SERVICE, Allow, Principal
from ..budgets import node_budgets
from ..fingerprint import canonical_fingerprint
from ..models import Node, NodePrivacy, utcnow
from ..schemas import (
    NodeCreate,
    NodeDecision,
    NodeOut,
    NodePrivacyIn,
    NodePrivacyOut,
    NodeRegistered,
    NodeSeen,
    NodeStatus,
    Page,
)
from .common import Limit, Offset, check_block_index, get_or_404, get_run, paginate, registry

router = APIRouter(tags=["nodes"])


def node_id_for(fingerprint: str) -> str:
    """A short stable id derived from the key fingerprint: `node-` + 12 hex characters."""
    return "node-" + hashlib.sha256(fingerprint.encode()).hexdigest()[:12]


@router.post(
    "/nodes",
    status_code=201,
    response_model=NodeRegistered,
    summary="Register a node (pending until approved)",
    responses={200: {"description": "a node with this key already exists: it is returned unchanged"}},
)
def register_node(
    body: NodeCreate, response: Response, who: Principal = Depends(Allow(RUN_CREATORS)), reg=Depends(registry)
):
    fingerprint = canonical_fingerprint(body.public_key, body.fingerprint)
    with reg.db.writer() as s:
        existing = s.execute(select(Node).where(Node.fingerprint == fingerprint)).scalar_one_or_none()
        if existing is not None:
            response.status_code = 200
            return NodeRegistered(**NodeOut.model_validate(existing).model_dump(), created=False)
        node = Node(
            id=node_id_for(fingerprint),
            display_name=body.display_name,
            organisation=body.organisation,
            public_key=body.public_key.strip(),
            fingerprint=fingerprint,
            status="pending",
            info={},
            secagg_identity=body.secagg_identity,
        )
        s.add(node)
        s.flush()
        events.record(
            s,
            who,
            "node.registered",
            "node",
            node.id,
            after={"display_name": node.display_name, "organisation": node.organisation, "fingerprint": fingerprint},
        )
        return NodeRegistered(**NodeOut.model_validate(node).model_dump(), created=True)


@router.get("/nodes", response_model=Page[NodeOut])
def list_nodes(
    status: NodeStatus | None = None,
    organisation: str | None = None,
    limit: int = Limit,
    offset: int = Offset,
    _: Principal = Depends(Allow(ALL_ROLES)),
    reg=Depends(registry),
):
    stmt = select(Node).order_by(Node.created_at, Node.id)
    if status:
        stmt = stmt.where(Node.status == status)
    if organisation:
        stmt = stmt.where(Node.organisation == organisation)
    with reg.db.reader() as s:
        return paginate(s, stmt, limit, offset, NodeOut)


@router.get("/nodes/{node_id}", response_model=NodeOut)
def read_node(node_id: str, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)):
    with reg.db.reader() as s:
        return NodeOut.model_validate(get_or_404(s, Node, node_id, "node"))


def enrol_secagg_identity(s, who: Principal, node: Node, identity: str | None) -> None:
    """Record the node's SecAgg identity key (once). A different key for an enrolled node is refused: companies
    pin it, so a change would look exactly like the key substitution the directory exists to detect."""
    if identity is None or identity == node.secagg_identity:
        return
    if node.secagg_identity is not None:
        raise HTTPException(
            409,
            f"node {node.id} already has SecAgg identity {node.secagg_identity[:16]}...; it never "
            f"changes (a company with a new key registers a new node key)",
        )
    node.secagg_identity = identity
    events.record(s, who, "node.secagg_enrolled", "node", node.id, after={"secagg_identity": identity})


def decide(
    reg, who: Principal, node_id: str, status: str, reason: str | None, secagg_identity: str | None = None
) -> NodeOut:
    """Approve or revoke a node (no-op if it already has that status), with an event; an approval may enrol the
    node's SecAgg identity."""
    with reg.db.writer() as s:
        node = get_or_404(s, Node, node_id, "node", lock=True)
        if status == "approved":
            enrol_secagg_identity(s, who, node, secagg_identity)
        before = node.status
        if before != status:
            now = utcnow()
            node.status, node.status_reason = status, reason
            if status == "approved":
                node.approved_at, node.revoked_at = now, None
            else:
                node.revoked_at = now
            events.record(
                s,
                who,
                f"node.{'approved' if status == 'approved' else 'revoked'}",
                "node",
                node.id,
                before={"status": before},
                after={"status": status, "reason": reason},
            )
        return NodeOut.model_validate(node)


@router.post("/nodes/{node_id}/approve", response_model=NodeOut)
def approve_node(
    node_id: str, body: NodeDecision | None = None, who: Principal = Depends(Allow(OPERATORS)), reg=Depends(registry)
):
    return decide(reg, who, node_id, "approved", body.reason if body else None, body.secagg_identity if body else None)


@router.post("/nodes/{node_id}/revoke", response_model=NodeOut)
def revoke_node(
    node_id: str, body: NodeDecision | None = None, who: Principal = Depends(Allow(OPERATORS)), reg=Depends(registry)
):
    return decide(reg, who, node_id, "revoked", body.reason if body else None)


@router.post(
    "/nodes/{node_id}/seen", response_model=NodeOut, summary="Service: the node was seen now (heartbeat; not an event)"
)
def node_seen(
    node_id: str, body: NodeSeen | None = None, _: Principal = Depends(Allow(SERVICE)), reg=Depends(registry)
):
    with reg.db.writer() as s:
        node = get_or_404(s, Node, node_id, "node")
        node.last_seen_at = utcnow()
        if body and body.info:
            node.info = body.info
        return NodeOut.model_validate(node)


@router.post(
    "/nodes/{node_id}/privacy",
    status_code=201,
    response_model=NodePrivacyOut,
    summary="Service: cumulative epsilon this node's data has spent on a block",
)
def record_node_privacy(
    node_id: str, body: NodePrivacyIn, who: Principal = Depends(Allow(SERVICE)), reg=Depends(registry)
):
    with reg.db.writer() as s:
        node = get_or_404(s, Node, node_id, "node")
        node.last_seen_at = utcnow()  # it took part in the round this record is about
        run = get_run(s, body.run_id)
        check_block_index(run, body.block_index)
        run.updated_at = utcnow()  # the run's change token (the dashboard re-renders on it)
        rec = NodePrivacy(node_id=node_id, **body.model_dump())
        s.add(rec)
        s.flush()
        events.record(
            s,
            who,
            "node.privacy",
            "node",
            node_id,
            run_id=body.run_id,
            after={"block_index": body.block_index, "round": body.round, "epsilon": body.epsilon, "delta": body.delta},
        )
        return NodePrivacyOut.model_validate(rec)


@router.get(
    "/nodes/{node_id}/privacy", summary="Privacy a node has spent, per run and block (totals: basic composition)"
)
def read_node_privacy(node_id: str, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)) -> dict:
    with reg.db.reader() as s:
        get_or_404(s, Node, node_id, "node")
        return {"node_id": node_id, "runs": [asdict(b) for b in node_budgets(s, node_id=node_id).values()]}
