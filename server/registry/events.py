"""The append-only event log: one row per state change or operator action, written in the same
transaction as the change itself, so the log and the data can never disagree."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from .auth import Principal
from .models import Event, utcnow


def record(
    session: Session,
    who: Principal,
    kind: str,
    subject_type: str,
    subject_id: Any,
    *,
    run_id: int | None = None,
    before: dict | None = None,
    after: dict | None = None,
) -> Event:
    """Add an event to `session` (flushed with the caller's transaction)."""
    event = Event(
        at=utcnow(),
        actor=who.name,
        actor_role=who.role,
        kind=kind,
        subject_type=subject_type,
        subject_id=str(subject_id),
        run_id=run_id,
        before=before,
        after=after,
    )
    session.add(event)
    return event
