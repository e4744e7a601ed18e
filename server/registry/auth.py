"""API tokens and role rules.

A token is `dbk_` + 43 url-safe characters (256 random bits). Only its sha256 is stored: with that much
entropy a fast hash is enough, and a leaked database reveals no usable token. Requests carry it as
`Authorization: Bearer <token>` (not CSRF-able: a browser never adds it on its own), or, in the dashboard, in
the session cookie: HttpOnly, SameSite=Strict, and Secure when the page was served over https.

CSRF. Every state-changing request that authenticates with the cookie must also carry the session's CSRF
token, `csrf_token_for(cookie)` = sha256("dblocks-csrf:" + session token): in the `X-CSRF-Token` header (htmx
sends it from the `hx-headers` of the page's <body>) or, for logout, in the form field `csrf_token`. Another
site can neither read the page nor compute the token without the session token, which never leaves the
HttpOnly cookie. The token appears only in full pages, never in the cached fragments that viewers share.
Login has no session yet: its form carries a random nonce that must equal the one in the `dblocks_login_csrf`
cookie set with the form (double submit; SameSite=Strict keeps the cookie off cross-site posts as well).

Every endpoint states who may call it with an `Allow(...)` dependency; the test suite checks that every
route has one and that each role gets exactly the access the documented matrix gives it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

import anyio.to_thread
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBearer
from sqlalchemy import select

from .models import ROLES, ApiToken

TOKEN_PREFIX = "dbk_"
COOKIE_NAME = "dblocks_token"
LOGIN_CSRF_COOKIE = "dblocks_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_NONCE = re.compile(r"[A-Za-z0-9_-]{43}")
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


# ---- sessions: cookies and CSRF ---------------------------------------------------------------------------------
def csrf_token_for(session_token: str) -> str:
    """The CSRF token of a dashboard session: 64 hex digits derived from its (secret) session token."""
    return hashlib.sha256(b"dblocks-csrf:" + session_token.encode()).hexdigest()


def require_csrf(session_token: str, presented: str | None) -> None:
    """403 unless `presented` is the CSRF token of `session_token` (compared in constant time)."""
    if not secrets_match(presented, csrf_token_for(session_token)):
        raise HTTPException(
            403,
            "this request uses the dashboard's login cookie but lacks the page's CSRF token "
            f"({CSRF_HEADER} header or {CSRF_FIELD} form field): reload the page and try again, "
            "or call the API with 'Authorization: Bearer <token>'",
        )


def secrets_match(presented: str | None, expected: str | None) -> bool:
    """Both present and equal, compared in constant time."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def login_nonce(request: Request) -> str:
    """The login form's CSRF nonce: the one in this browser's login cookie if it holds one of ours (so two open
    login tabs both work), else 256 fresh random bits."""
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return cookie if _NONCE.fullmatch(cookie) else secrets.token_urlsafe(32)


def session_csrf_token(request: Request) -> str:
    """The CSRF token for the session cookie this request carries ('' without one); templates put it in pages."""
    cookie = request.cookies.get(COOKIE_NAME)
    return csrf_token_for(cookie) if cookie else ""


def served_over_https(request: Request) -> bool:
    """Whether the browser reached us over https: the request's own scheme, or, only when the registry is set to
    trust a reverse proxy (DBLOCKS_TRUST_PROXY=1), the proxy's X-Forwarded-Proto."""
    if request.url.scheme == "https":
        return True
    if request.app.state.registry.settings.trust_proxy:
        return request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower() == "https"
    return False


def set_cookie(response, request: Request, name: str, value: str, *, max_age: int, path: str = "/") -> None:
    """A session cookie: HttpOnly, SameSite=Strict, Secure when served over https."""
    response.set_cookie(
        name, value, max_age=max_age, path=path, httponly=True, samesite="strict", secure=served_over_https(request)
    )


def delete_cookie(response, request: Request, name: str, path: str = "/") -> None:
    response.delete_cookie(name, path=path, httponly=True, samesite="strict", secure=served_over_https(request))


def _presented_token(request: Request) -> tuple[str | None, bool]:
    """(token, came_from_cookie)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise HTTPException(
                401, "Authorization header must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
            )
        return value.strip(), False
    cookie = request.cookies.get(COOKIE_NAME)
    return (cookie, True) if cookie else (None, False)


def _lookup(registry, token_hash: str) -> Principal | None:
    with registry.db.reader() as s:
        row = s.execute(
            select(ApiToken).where(ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None))
        ).scalar_one_or_none()
    return None if row is None else Principal(token_id=row.id, name=row.name, role=row.role)


async def authenticate(request: Request) -> Principal:
    """The principal behind the request's token; 401 if there is none or it is unknown or revoked.
    Async, so a cached token costs no thread hop; a cache miss reads the database in a worker thread."""
    token, from_cookie = _presented_token(request)
    if not token:
        raise HTTPException(
            401,
            "missing API token: send 'Authorization: Bearer <token>' (create one with `dbserver tokens create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if from_cookie and request.method not in SAFE_METHODS:
        require_csrf(token, request.headers.get(CSRF_HEADER))
    registry = request.app.state.registry
    token_hash = hash_token(token)
    principal = registry.token_cache.get(token_hash)
    if principal is None:
        principal = await anyio.to_thread.run_sync(_lookup, registry, token_hash)
        if principal is None:
            raise HTTPException(401, "unknown or revoked API token", headers={"WWW-Authenticate": "Bearer"})
        registry.token_cache.put(token_hash, principal)
    request.state.principal = principal
    return principal


BEARER = HTTPBearer(
    auto_error=False, description="an API token: `dbserver tokens create --role ...`"
)  # for OpenAPI's Authorize


class Allow:
    """FastAPI dependency: the caller's Principal if its role is in `roles`, else 401/403."""

    def __init__(self, roles: frozenset[str]):
        unknown = set(roles) - ALL_ROLES
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; roles are {list(ROLES)}")
        self.roles = frozenset(roles)

    async def __call__(self, request: Request, _: object = Depends(BEARER)) -> Principal:
        principal = await authenticate(request)
        if principal.role not in self.roles:
            raise HTTPException(
                403,
                f"role {principal.role!r} may not {request.method} {request.url.path}; "
                f"allowed roles: {', '.join(sorted(self.roles))}",
            )
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
