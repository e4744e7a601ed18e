"""Helpers the API modules share: the registry handle, pagination, multipart JSON fields, 404s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from ..limits import non_finite_error, non_finite_path, surrogate_error, surrogate_path
from ..models import Run
from ..schemas import DB_INT_MAX, Page

M = TypeVar("M", bound=BaseModel)


class _Keyed(Protocol):
    """An ORM model with an `id` primary key (every table of `..models`)."""

    id: Any


K = TypeVar("K", bound=_Keyed)
Limit = Query(50, ge=1, le=500, description="page size")
Offset = Query(0, ge=0, le=DB_INT_MAX, description="rows to skip")
# ids, rounds and block indices in paths and queries: within the database's INTEGER range (else a 422, never a
# database error); float filters: finite
IdPath = Annotated[int, Path(ge=0, le=DB_INT_MAX)]
IdQuery = Annotated[int | None, Query(ge=0, le=DB_INT_MAX)]
FiniteQuery = Annotated[float | None, Query(allow_inf_nan=False)]


async def registry(request: Request):
    """The `Registry` (settings, database, store) of the running app (async: no thread hop)."""
    return request.app.state.registry


def paginate(session: Session, stmt: Select, limit: int, offset: int, out: type[M]) -> Response:
    """One page of `stmt` as JSON. Serialized here, once: FastAPI would validate the page a second time."""
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    if total is None:  # a COUNT query always returns its one row
        raise RuntimeError("the page's COUNT query returned no row")
    rows: Sequence[Any] = session.execute(stmt.limit(limit).offset(offset)).scalars().all()
    # the item model is a runtime class: pydantic parametrizes Page with it (mypy only takes static types in [])
    page = Page[out](  # type: ignore[valid-type]
        items=[out.model_validate(r) for r in rows], total=total, limit=limit, offset=offset
    )
    return Response(page.model_dump_json(), media_type="application/json")


def check_finite_json(text: str, field: str) -> None:
    """422 located at `field` if the JSON in this multipart form field holds a NaN or an infinity, or a string
    with a lone surrogate (request bodies sent as JSON are checked by `limits.FiniteJsonBodies`)."""
    loc = non_finite_path(text)
    if loc is not None:
        raise RequestValidationError([non_finite_error(("body", field, *loc))])
    loc = surrogate_path(text)
    if loc is not None:
        raise RequestValidationError([surrogate_error(("body", field, *loc))])


def parse_json_field(model: type[M], text: str, field: str) -> M:
    """A multipart form field holding JSON, validated as `model`; errors are 422s located at `field`.
    Numbers must be finite anywhere in it, free-form dicts included."""
    check_finite_json(text, field)
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", field, *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


def get_or_404(session: Session, model: type[K], key, what: str, *, lock: bool = False) -> K:
    """The row of `model` with this id; 404 if there is none (an integer id beyond the column's range cannot
    exist: 404 without a query, which the database would refuse)."""
    if isinstance(key, int) and not 0 <= key <= DB_INT_MAX:
        raise HTTPException(404, f"{what} {key} does not exist")
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
        raise HTTPException(
            422, f"block_index {block_index} is out of range: run {run.id} has blocks 0..{run.num_blocks - 1}"
        )
