"""Leakage audits (researchers): post with artifact files, list, read, download artifacts."""

from __future__ import annotations

import mimetypes
import re
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Response, UploadFile
from sqlalchemy import select, update

from .. import events
from ..auth import ALL_ROLES, AUDITORS, Allow, Principal
from ..models import Audit, AuditArtifact, BlockVersion, Run, utcnow
from ..schemas import AuditMeta, AuditOut, Page, Verdict
from .common import IdPath, IdQuery, Limit, Offset, get_or_404, paginate, parse_json_field, registry

router = APIRouter(tags=["audits"])
SAFE_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "application/json", "text/plain", "text/csv"}


def check_filename(name: str | None) -> str:
    """An artifact's display name: letters, digits, '.', '_', '-', at most 128, not starting with a dot.

    Names never become paths (files are stored by hash), but a name like '../x' is refused anyway so that
    what a researcher sees is what was stored."""
    if not name or not SAFE_FILENAME.fullmatch(name):
        raise HTTPException(
            422,
            f"artifact filename {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no folders)",
        )
    return name


def media_type_for(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


@router.post(
    "/audits",
    status_code=201,
    response_model=AuditOut,
    summary="Researcher: post an audit (multipart: meta JSON + artifact files)",
)
def post_audit(
    meta: Annotated[str, Form(description="AuditMeta as JSON")],
    artifacts: Annotated[list[UploadFile], File(description="PNGs, reports, ...")] = [],  # noqa: B006 (FastAPI copies defaults)
    who: Principal = Depends(Allow(AUDITORS)),
    reg=Depends(registry),
):
    m = parse_json_field(AuditMeta, meta, "meta")
    files: dict[str, bytes] = {}
    for upload in artifacts:
        name = check_filename(upload.filename)
        if name in files:
            raise HTTPException(422, f"artifact filename {name!r} appears twice")
        files[name] = upload.file.read()
    with reg.db.reader() as s:
        get_or_404(s, BlockVersion, m.block_version_id, "block version")
    digests = {name: reg.store.put(data) for name, data in files.items()}
    with reg.db.writer() as s:
        version = get_or_404(s, BlockVersion, m.block_version_id, "block version")
        s.execute(update(Run).where(Run.id == version.run_id).values(updated_at=utcnow()))  # the run's change token
        audit = Audit(run_id=version.run_id, block_index=version.block_index, created_by=who.name, **m.model_dump())
        s.add(audit)
        s.flush()
        for name, data in files.items():
            s.add(
                AuditArtifact(
                    audit_id=audit.id,
                    filename=name,
                    media_type=media_type_for(name),
                    sha256=digests[name],
                    size_bytes=len(data),
                )
            )
        events.record(
            s,
            who,
            "audit.posted",
            "audit",
            audit.id,
            run_id=version.run_id,
            after={
                "block_version_id": version.id,
                "attack": m.attack,
                "verdict": m.verdict,
                "artifacts": sorted(files),
            },
        )
        s.flush()
        s.refresh(audit, ["artifacts"])
        return AuditOut.model_validate(audit)


@router.get("/audits", response_model=Page[AuditOut], summary="Audits, newest first")
def list_audits(
    block_version_id: IdQuery = None,
    run_id: IdQuery = None,
    verdict: Verdict | None = None,
    attack: str | None = None,
    limit: int = Limit,
    offset: int = Offset,
    _: Principal = Depends(Allow(ALL_ROLES)),
    reg=Depends(registry),
):
    stmt = select(Audit).order_by(Audit.id.desc())
    for column, value in (
        (Audit.block_version_id, block_version_id),
        (Audit.run_id, run_id),
        (Audit.verdict, verdict),
        (Audit.attack, attack),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    with reg.db.reader() as s:
        return paginate(s, stmt, limit, offset, AuditOut)


@router.get("/audits/{audit_id}", response_model=AuditOut)
def read_audit(audit_id: IdPath, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)):
    with reg.db.reader() as s:
        return AuditOut.model_validate(get_or_404(s, Audit, audit_id, "audit"))


@router.get(
    "/audits/{audit_id}/artifacts/{filename}",
    response_class=Response,
    summary="An audit's artifact file (hash-verified)",
)
def download_artifact(audit_id: IdPath, filename: str, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)):
    with reg.db.reader() as s:
        art = s.execute(
            select(AuditArtifact).where(AuditArtifact.audit_id == audit_id, AuditArtifact.filename == filename)
        ).scalar_one_or_none()
        if art is None:
            raise HTTPException(404, f"audit {audit_id} has no artifact named {filename!r}")
        digest, media_type = art.sha256, art.media_type
    inline = media_type in INLINE_TYPES
    return Response(
        reg.store.get(digest),
        media_type=media_type if inline else "application/octet-stream",
        headers={
            "X-Content-SHA256": digest,
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{filename}"',
        },
    )
