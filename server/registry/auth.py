"""API tokens and role rules.

A token is `dbk_` + 43 url-safe characters (256 random bits). Only its sha256 is stored: with that much
entropy a fast hash is enough, and a leaked database reveals no usable token. Requests carry it as
`Authorization: Bearer <token>`; the dashboard keeps it in an HttpOnly, SameSite=Strict cookie, and a
cookie-authenticated write must also carry the `HX-Request` header that htmx sends (a cross-site form cannot
set it), which closes the CSRF door.

Every endpoint states who may call it with an `Allow(...)` dependency; the test suite checks that every
route has one and that each role gets exactly the access the documented matrix gives it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request
from sqlalchemy import select

from .models import ROLES, ApiToken

TOKEN_PREFIX = "dbk_"
COOKIE_NAME = "dblocks_token"
CACHE_SECONDS = 5.0  # a revoked token stops working at once in this process, within this many s in others

ALL_ROLES = frozenset(ROLES)
OPERATORS = frozenset({"admin", "operator"})
SERVICE = frozenset({"admin", "service"})
RUN_CREATORS = frozenset({"admin", "operator", "service"})
AUDITORS = frozenset({"admin", "researcher"})
WEIGHT_READERS = frozenset({"admin", "operator", "researcher", "service"})
ADMINS = frozenset({"admin"})


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name and role."""

    token_id: int
    name: str
    role: str


class TokenCache:
    """sha256(token) -> Principal for a few seconds, so a request costs no token query."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> Principal | None:
        with self._lock:
            hit = self._entries.get(token_hash)
        if hit and hit[1] > time.monotonic():
            return hit[0]
        return None

    def put(self, token_hash: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[token_hash] = (principal, time.monotonic() + CACHE_SECONDS)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _presented_token(request: Request) -> tuple[str | None, bool]:
    """(token, came_from_cookie)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise HTTPException(401, "Authorization header must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
        return value.strip(), False
    cookie = request.cookies.get(COOKIE_NAME)
    return (cookie, True) if cookie else (None, False)


def authenticate(request: Request) -> Principal:
    """The principal behind the request's token; 401 if there is none or it is unknown or revoked."""
    token, from_cookie = _presented_token(request)
    if not token:
        raise HTTPException(401, "missing API token: send 'Authorization: Bearer <token>' (create one with `dbserver tokens create`)",
                            headers={"WWW-Authenticate": "Bearer"})
    if from_cookie and request.method not in ("GET", "HEAD", "OPTIONS") and "hx-request" not in request.headers:
        raise HTTPException(403, "cookie-authenticated writes must come from the dashboard (HX-Request header missing)")
    registry = request.app.state.registry
    token_hash = hash_token(token)
    principal = registry.token_cache.get(token_hash)
    if principal is None:
        with registry.db.reader() as s:
            row = s.execute(select(ApiToken).where(ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None))).scalar_one_or_none()
        if row is None:
            raise HTTPException(401, "unknown or revoked API token", headers={"WWW-Authenticate": "Bearer"})
        principal = Principal(token_id=row.id, name=row.name, role=row.role)
        registry.token_cache.put(token_hash, principal)
    request.state.principal = principal
    return principal


class Allow:
    """FastAPI dependency: the caller's Principal if its role is in `roles`, else 401/403."""

    def __init__(self, roles: frozenset[str]):
        unknown = set(roles) - ALL_ROLES
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; roles are {list(ROLES)}")
        self.roles = frozenset(roles)

    def __call__(self, request: Request) -> Principal:
        principal = authenticate(request)
        if principal.role not in self.roles:
            raise HTTPException(403, f"role {principal.role!r} may not {request.method} {request.url.path}; "
                                     f"allowed roles: {', '.join(sorted(self.roles))}")
        return principal

    def __repr__(self) -> str:
        return f"Allow({sorted(self.roles)})"


def issue_token(session, *, name: str, role: str, created_by: str):
    """Create a token row in `session`; returns (row, secret). The secret is not stored anywhere."""
    if role not in ALL_ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    secret = new_token()
    row = ApiToken(name=name, role=role, token_hash=hash_token(secret), prefix=secret[:10], created_by=created_by)
    session.add(row)
    session.flush()
    return row, secret
