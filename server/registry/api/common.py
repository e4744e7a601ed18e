"""Helpers the API modules share: the registry handle, pagination, multipart JSON fields, 404s."""

from __future__ import annotations

from typing import TypeVar

from fastapi import HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from ..models import Base, Run

M = TypeVar("M", bound=BaseModel)
Limit = Query(50, ge=1, le=500, description="page size")
Offset = Query(0, ge=0, description="rows to skip")


def registry(request: Request):
    """The `Registry` (settings, database, store) of the running app."""
    return request.app.state.registry


def paginate(session: Session, stmt: Select, limit: int, offset: int, out: type[M]) -> dict:
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = session.execute(stmt.limit(limit).offset(offset)).scalars().all()
    return {"items": [out.model_validate(r) for r in rows], "total": total, "limit": limit, "offset": offset}


def parse_json_field(model: type[M], text: str, field: str) -> M:
    """A multipart form field holding JSON, validated as `model`; errors are 422s located at `field`."""
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", field, *err["loc"])} for err in e.errors(include_url=False)]) from None


def get_or_404(session: Session, model: type[Base], key, what: str, *, lock: bool = False):
    stmt = select(model).where(model.id == key)
    if lock:
        stmt = stmt.with_for_update()
    row = session.execute(stmt).scalar_one_or_none()
    if row is None:
        raise HTTPException(404, f"{what} {key} does not exist")
    return row


def get_run(session: Session, run_id: int, *, lock: bool = False) -> Run:
    return get_or_404(session, Run, run_id, "run", lock=lock)


def check_block_index(run: Run, block_index: int) -> None:
    if not 0 <= block_index < run.num_blocks:
        raise HTTPException(422, f"block_index {block_index} is out of range: run {run.id} has blocks 0..{run.num_blocks - 1}")
