"""Who am I, the event log, and API tokens (admins)."""

from __future__ import annotations

from typing import Literal, cast

from fastapi import APIRouter, Depends
from sqlalchemy import select

from .. import events
from ..auth import ADMINS, ALL_ROLES, Allow, Principal, issue_token
from ..models import ApiToken, Event, utcnow
from ..schemas import EventOut, Page, Role, TokenCreate, TokenCreated, TokenOut, WhoAmI
from .common import IdPath, IdQuery, Limit, Offset, get_or_404, paginate, registry

router = APIRouter(tags=["admin"])


@router.get("/whoami", response_model=WhoAmI)
def whoami(who: Principal = Depends(Allow(ALL_ROLES))):
    # the token's role column is a str; WhoAmI (pydantic) validates it
    return WhoAmI(token_id=who.token_id, name=who.name, role=cast(Role, who.role))


@router.get("/events", response_model=Page[EventOut], summary="The append-only event log")
def list_events(
    run_id: IdQuery = None,
    kind: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    after_id: IdQuery = None,
    order: Literal["asc", "desc"] = "desc",
    limit: int = Limit,
    offset: int = Offset,
    _: Principal = Depends(Allow(ALL_ROLES)),
    reg=Depends(registry),
):
    stmt = select(Event).order_by(Event.id.asc() if order == "asc" else Event.id.desc())
    for column, value in (
        (Event.run_id, run_id),
        (Event.kind, kind),
        (Event.subject_type, subject_type),
        (Event.subject_id, subject_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if after_id is not None:
        stmt = stmt.where(Event.id > after_id)
    with reg.db.reader() as s:
        return paginate(s, stmt, limit, offset, EventOut)


@router.post(
    "/tokens", status_code=201, response_model=TokenCreated, summary="Create an API token (the secret is shown once)"
)
def create_token(body: TokenCreate, who: Principal = Depends(Allow(ADMINS)), reg=Depends(registry)):
    with reg.db.writer() as s:
        row, secret = issue_token(s, name=body.name, role=body.role, created_by=who.name)
        events.record(
            s, who, "token.created", "token", row.id, after={"name": row.name, "role": row.role, "prefix": row.prefix}
        )
        return TokenCreated(**TokenOut.model_validate(row).model_dump(), token=secret)


@router.get("/tokens", response_model=Page[TokenOut])
def list_tokens(limit: int = Limit, offset: int = Offset, _: Principal = Depends(Allow(ADMINS)), reg=Depends(registry)):
    with reg.db.reader() as s:
        return paginate(s, select(ApiToken).order_by(ApiToken.id), limit, offset, TokenOut)


@router.post("/tokens/{token_id}/revoke", response_model=TokenOut)
def revoke_token(token_id: IdPath, who: Principal = Depends(Allow(ADMINS)), reg=Depends(registry)):
    with reg.db.writer() as s:
        row = get_or_404(s, ApiToken, token_id, "token", lock=True)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            events.record(s, who, "token.revoked", "token", row.id, after={"name": row.name, "role": row.role})
        out = TokenOut.model_validate(row)
    reg.token_cache.clear()
    return out
