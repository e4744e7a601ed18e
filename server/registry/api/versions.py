"""Block versions: registration with weights (service), queries, weights download, lineage."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Response, UploadFile
from sqlalchemy import func, select, update

from .. import events
from ..auth import ALL_ROLES, SERVICE, WEIGHT_READERS, Allow, Principal
from ..models import Audit, Block, BlockVersion, Node, Run, utcnow
from ..nodemap import node_aliases, resolve
from ..schemas import (
    AuditOut,
    BlockSpecIn,
    Lineage,
    LineageStep,
    Page,
    VersionMetaIn,
    VersionOut,
    VersionRegistered,
)
from .common import (
    FiniteQuery,
    IdPath,
    IdQuery,
    Limit,
    Offset,
    check_block_index,
    get_or_404,
    get_run,
    paginate,
    parse_json_field,
    registry,
)

router = APIRouter(tags=["block versions"])
MAX_LINEAGE_DEPTH = 100_000


def parse_spec(text: str):
    """A BlockSpec from its JSON (dblocks.shared.wire); 422 naming the problem if it is not one: its shape is
    checked first (`BlockSpecIn`: an object, every field present with its type), then the spec is built."""
    from dblocks.shared.wire import BlockSpec  # imports torch: only when a version is registered

    try:
        json.loads(text)
    except (ValueError, RecursionError) as e:
        raise HTTPException(422, f"spec is not a valid BlockSpec JSON ({type(e).__name__}: {e})") from None
    parse_json_field(BlockSpecIn, text, "spec")
    try:
        return BlockSpec.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise HTTPException(422, f"spec is not a valid BlockSpec JSON ({type(e).__name__}: {e})") from None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check_spec_fits(spec, run: Run, block: Block) -> None:
    """The spec must describe block `block` of this run: same task, B, index and noise intervals."""
    problems = []
    if spec.task != run.task:
        problems.append(f"spec.task is {spec.task!r}, the run's task is {run.task!r}")
    if spec.num_blocks != run.num_blocks:
        problems.append(f"spec.num_blocks is {spec.num_blocks}, the run has {run.num_blocks}")
    if spec.block_index != block.block_index:
        problems.append(f"spec.block_index is {spec.block_index} but the URL names block {block.block_index}")
    if (
        block.owned_lo is not None
        and block.owned_hi is not None
        and not (_close(spec.owned_interval[0], block.owned_lo) and _close(spec.owned_interval[1], block.owned_hi))
    ):
        problems.append(
            f"spec.owned_interval {list(spec.owned_interval)} differs from the run's block interval "
            f"{[block.owned_lo, block.owned_hi]}"
        )
    if problems:
        raise HTTPException(422, "spec does not fit this run: " + "; ".join(problems))


def _same_round(s, run_id: int, block_index: int, round_: int) -> BlockVersion | None:
    return s.execute(
        select(BlockVersion).where(
            BlockVersion.run_id == run_id, BlockVersion.block_index == block_index, BlockVersion.round == round_
        )
    ).scalar_one_or_none()


def _existing_or_conflict(existing: BlockVersion, digest: str) -> VersionRegistered:
    if existing.sha256 != digest:
        raise HTTPException(
            409,
            f"block {existing.block_index} of run {existing.run_id} already has version {existing.version} "
            f"for round {existing.round} with sha256 {existing.sha256}; these weights hash to {digest}. "
            "A round registers one version; use the next round number for new weights",
        )
    return VersionRegistered(**VersionOut.model_validate(existing).model_dump(), created=False)


@router.post(
    "/runs/{run_id}/blocks/{block_index}/versions",
    status_code=201,
    response_model=VersionRegistered,
    summary="Service: register a block version (multipart: meta JSON, spec JSON, weights file)",
    responses={
        200: {"description": "this round was already registered with the same sha256: the existing version"},
        409: {"description": "this round was already registered with other weights"},
    },
)
def register_version(
    run_id: IdPath,
    block_index: IdPath,
    response: Response,
    meta: Annotated[str, Form(description="VersionMeta as JSON")],
    spec: Annotated[str, Form(description="BlockSpec.to_json()")],
    weights: Annotated[UploadFile, File(description="safetensors bytes whose sha256 is spec.sha256")],
    who: Principal = Depends(Allow(SERVICE)),
    reg=Depends(registry),
):
    m = parse_json_field(VersionMetaIn, meta, "meta")
    block_spec = parse_spec(spec)
    data = weights.file.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != block_spec.sha256:
        raise HTTPException(
            422, f"weights do not match the spec: their sha256 is {digest}, spec.sha256 is {block_spec.sha256}"
        )
    with reg.db.reader() as s:
        run = get_run(s, run_id)
        check_block_index(run, block_index)
        existing = _same_round(s, run_id, block_index, m.round)
        if existing is not None:
            response.status_code = 200
            return _existing_or_conflict(existing, digest)
    reg.store.put(data)  # before the row: a row never points at a missing file (an orphan file is harmless)
    with reg.db.writer() as s:
        run = get_run(s, run_id)
        block = s.execute(
            select(Block).where(Block.run_id == run_id, Block.block_index == block_index).with_for_update()
        ).scalar_one()
        check_spec_fits(block_spec, run, block)
        existing = _same_round(s, run_id, block_index, m.round)  # again, under the block lock
        if existing is not None:
            response.status_code = 200
            return _existing_or_conflict(existing, digest)
        if m.parent_version_id is not None:
            parent = get_or_404(s, BlockVersion, m.parent_version_id, "parent version")
            if parent.block_index != block_index:
                raise HTTPException(
                    422,
                    f"parent_version_id {parent.id} is a version of block {parent.block_index}, not block "
                    f"{block_index}",
                )
        number = (s.scalar(select(func.max(BlockVersion.version)).where(BlockVersion.block_id == block.id)) or 0) + 1
        v = BlockVersion(
            run_id=run_id,
            block_id=block.id,
            block_index=block_index,
            version=number,
            **m.model_dump(),
            owned_lo=block_spec.owned_interval[0],
            owned_hi=block_spec.owned_interval[1],
            train_lo=block_spec.training_interval[0],
            train_hi=block_spec.training_interval[1],
            param_count=block_spec.param_count,
            spec_json=spec,
            sha256=digest,
            size_bytes=len(data),
            weights_uri=f"sha256:{digest}",
            created_by=who.name,
        )
        s.add(v)
        if block.param_count is None:
            block.param_count = block_spec.param_count
        members = resolve(m.cohort, node_aliases(s)) if m.cohort else []  # SuperLink node ids -> registry nodes
        if members:
            s.execute(
                update(Node)
                .where(Node.id.in_(members))
                .values(blocks_trained=Node.blocks_trained + 1, last_seen_at=utcnow())
            )
        run.updated_at = utcnow()
        s.flush()
        events.record(
            s,
            who,
            "version.registered",
            "block_version",
            v.id,
            run_id=run_id,
            after={
                "block_index": block_index,
                "version": number,
                "round": m.round,
                "sha256": digest,
                "parent_version_id": m.parent_version_id,
                "record_epsilon": m.record_epsilon,
            },
        )
        return VersionRegistered(**VersionOut.model_validate(v).model_dump(), created=True)


@router.get(
    "/runs/{run_id}/blocks/{block_index}/latest",
    response_model=VersionOut | None,
    summary="Newest version of a block (null if it has none yet): where a restarted server resumes",
)
def latest_version(
    run_id: IdPath, block_index: IdPath, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)
):
    with reg.db.reader() as s:
        check_block_index(get_run(s, run_id), block_index)
        v = s.execute(
            select(BlockVersion)
            .where(BlockVersion.run_id == run_id, BlockVersion.block_index == block_index)
            .order_by(BlockVersion.version.desc())
            .limit(1)
        ).scalar_one_or_none()
        return None if v is None else VersionOut.model_validate(v)


@router.get("/versions", response_model=Page[VersionOut], summary="Query block versions, oldest first")
def list_versions(
    run_id: IdQuery = None,
    block_index: IdQuery = None,
    round: IdQuery = None,
    max_epsilon: FiniteQuery = None,
    max_client_epsilon: FiniteQuery = None,
    sha256: str | None = None,
    limit: int = Limit,
    offset: int = Offset,
    _: Principal = Depends(Allow(ALL_ROLES)),
    reg=Depends(registry),
):
    """Filters combine with AND. `max_epsilon` keeps versions whose record-level epsilon is known and <= it."""
    stmt = select(BlockVersion).order_by(BlockVersion.id)
    for column, value in (
        (BlockVersion.run_id, run_id),
        (BlockVersion.block_index, block_index),
        (BlockVersion.round, round),
        (BlockVersion.sha256, sha256),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if max_epsilon is not None:
        stmt = stmt.where(BlockVersion.record_epsilon <= max_epsilon)
    if max_client_epsilon is not None:
        stmt = stmt.where(BlockVersion.client_epsilon <= max_client_epsilon)
    with reg.db.reader() as s:
        return paginate(s, stmt, limit, offset, VersionOut)


@router.get("/versions/{version_id}", response_model=VersionOut)
def read_version(version_id: IdPath, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)):
    with reg.db.reader() as s:
        return VersionOut.model_validate(get_or_404(s, BlockVersion, version_id, "block version"))


@router.get(
    "/versions/{version_id}/weights",
    summary="The version's safetensors bytes (hash-verified on read)",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_weights(version_id: IdPath, _: Principal = Depends(Allow(WEIGHT_READERS)), reg=Depends(registry)):
    with reg.db.reader() as s:
        v = get_or_404(s, BlockVersion, version_id, "block version")
        digest = v.sha256
    data = reg.store.get(digest)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "X-Content-SHA256": digest,
            "Content-Disposition": f'attachment; filename="block-version-{version_id}.safetensors"',
        },
    )


@router.get(
    "/versions/{version_id}/lineage",
    response_model=Lineage,
    summary="A version, its ancestors, their cohorts and audits",
)
def lineage(version_id: IdPath, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)):
    with reg.db.reader() as s:
        chain = [get_or_404(s, BlockVersion, version_id, "block version")]
        seen = {chain[0].id}
        while chain[-1].parent_version_id is not None and len(chain) < MAX_LINEAGE_DEPTH:
            parent = s.get(BlockVersion, chain[-1].parent_version_id)
            if parent is None or parent.id in seen:
                break
            seen.add(parent.id)
            chain.append(parent)
        audits: dict[int, list[AuditOut]] = {v.id: [] for v in chain}
        for a in s.execute(select(Audit).where(Audit.block_version_id.in_(seen)).order_by(Audit.id)).scalars():
            audits[a.block_version_id].append(AuditOut.model_validate(a))
        steps = [LineageStep(version=VersionOut.model_validate(v), audits=audits[v.id]) for v in chain]
        return Lineage(version=steps[0].version, audits=steps[0].audits, ancestors=steps[1:])
