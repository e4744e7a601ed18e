"""The registry application: `create_app(settings)` migrates the database (`alembic upgrade head`), opens
the artifact store and serves the REST API under /api, the dashboard at /, OpenAPI docs at /docs."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import secrets
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import DataError, IntegrityError

from .api import ROUTERS as API_ROUTERS
from .auth import TokenCache, session_csrf_token
from .config import RegistrySettings
from .dashboard import FragmentCache, template_filters
from .dashboard import router as dashboard_router
from .db import Database
from .fingerprint import PublicKeyError
from .lifecycle import TransitionError
from .limits import BodySizeLimit, FiniteJsonBodies
from .revocation import RevocationAwareTokenCache
from .store import ArtifactCorrupt, ArtifactNotFound, ContentStore

HERE = Path(__file__).parent
REQUEST_THREADS = 8  # handlers run in a thread pool; more threads only fight over the GIL (measured: 8 beat 16 and 40)
log = logging.getLogger("dblocks.registry")


@dataclass
class Registry:
    """Everything a request handler needs: settings, database, artifact store, caches, templates."""

    settings: RegistrySettings
    db: Database
    store: ContentStore
    token_cache: TokenCache
    templates: Jinja2Templates
    fragments: FragmentCache


def open_registry(settings: RegistrySettings) -> Registry:
    """Migrate the database to head and open the store."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings)
    db.migrate()
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(template_filters())
    templates.env.globals["session_csrf"] = session_csrf_token  # base.html: the CSRF token of the page's session
    templates.env.auto_reload = False  # templates ship with the package; no stat() per render
    return Registry(
        settings=settings,
        db=db,
        store=ContentStore(settings.artifact_dir),
        token_cache=RevocationAwareTokenCache(settings.data_dir),  # a revocation anywhere on this host: at once
        templates=templates,
        fragments=FragmentCache(),
    )


def warm_up() -> None:
    """Import the wire format (and with it torch) before the first request needs it, then move everything
    alive to the permanent generation: the garbage collector then no longer walks torch's ~10^5 objects."""
    importlib.import_module("dblocks.shared.wire")
    if os.environ.get("XFREEZE", "1") == "1":
        gc.freeze()


# Content-Security-Policy of every response: scripts, styles, images, fetches and forms only from this origin; no
# inline script or style (templates and static/*.js have none), no plugins, no <base>, no framing. Swagger UI
# (/docs) styles its widgets inline and draws icons from data: URLs, so /docs alone allows those two.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'").replace(
    "img-src 'self'", "img-src 'self' data:"
)
DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>dblocks registry API</title>
  <link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
  <link rel="stylesheet" href="/static/vendor/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static/vendor/swagger-ui-bundle.js"></script>
  <script src="/static/swagger-init.js"></script>
</body>
</html>
"""


class ContentSecurityPolicy:
    """Plain ASGI middleware: adds the Content-Security-Policy header to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = (b"content-security-policy", (DOCS_CSP if scope["path"] == "/docs" else CSP).encode())

        async def send_with_csp(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, send_with_csp)


def _json_safe(value, limit: int = 200):
    """A validation error's `input` as JSON can carry it: plain JSON scalars as they are (strings that are not
    Unicode text escaped), anything else (bytes, containers, objects) as a short repr."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    text = value if isinstance(value, str) else repr(value)
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def safe_validation_error(err: dict) -> dict:
    """One entry of a 422 `detail`: type, loc, msg and input, each of them JSON-encodable whatever was sent."""
    return {
        "type": err.get("type"),
        "loc": [p if isinstance(p, int) else _json_safe(str(p)) for p in err.get("loc", ())],
        "msg": _json_safe(str(err.get("msg", "")), 2000),
        "input": _json_safe(err.get("input")),
    }


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api") and "text/html" in request.headers.get("accept", "")


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    settings = settings or RegistrySettings.from_env()
    registry = open_registry(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        # BlockSpec and NoiseSchedule come with torch (seconds to import): load them now, not in the first request
        threading.Thread(target=warm_up, daemon=True, name="warm-up").start()
        yield
        registry.db.dispose()

    app = FastAPI(
        title="dblocks registry",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Runs, block versions, privacy budgets, nodes and leakage audits of dblocks. "
        "Authenticate with `Authorization: Bearer <token>` (`dbserver tokens create --role ...`).",
    )
    app.state.registry = registry
    app.add_middleware(FiniteJsonBodies)  # added first, so it runs inside the size limit: what it buffers is bounded
    app.add_middleware(
        BodySizeLimit, max_upload_bytes=settings.max_upload_bytes, max_json_bytes=settings.max_json_bytes
    )
    app.add_middleware(ContentSecurityPolicy)  # outermost: the 413 and 422 answers of the limits get it too
    for router in API_ROUTERS:
        app.include_router(router, prefix="/api")
    app.include_router(dashboard_router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/health", tags=["admin"], summary="Liveness and schema check (no token needed)")
    def health() -> dict:
        with registry.db.reader() as s:
            from sqlalchemy import text

            s.execute(text("SELECT 1 FROM runs LIMIT 1"))
        return {"status": "ok", "database": registry.db.read_engine.dialect.name}

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI from the vendored files (FastAPI's default loads it from a CDN and starts it inline)."""
        return HTMLResponse(DOCS_HTML)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if exc.status_code == 401 and request.method == "GET" and _wants_html(request):
            if request.headers.get("hx-request"):
                return JSONResponse({"detail": exc.detail}, status_code=401, headers={"HX-Redirect": "/login"})
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return await http_exception_handler(request, exc)

    @app.exception_handler(TransitionError)
    async def _transition(_: Request, exc: TransitionError):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(PublicKeyError)
    async def _key(_: Request, exc: PublicKeyError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError):
        return JSONResponse(
            {"detail": f"conflicts with existing data: {str(exc.orig).splitlines()[0][:300]}"}, status_code=409
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        return JSONResponse({"detail": [safe_validation_error(e) for e in exc.errors()]}, status_code=422)

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError):
        return JSONResponse(
            {"detail": f"a value does not fit the database: {str(exc.orig).splitlines()[0][:300]}"}, status_code=422
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        """Anything no other handler knows: logged here with its stack, answered with a 500 naming only an id to
        quote (never the stack or the exception's text, which may hold internals)."""
        incident = secrets.token_hex(6)
        log.error("incident %s: %s %s", incident, request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"detail": f"internal error (incident {incident}); the registry's log has the details"}, status_code=500
        )

    @app.exception_handler(ArtifactNotFound)
    async def _missing(_: Request, exc: ArtifactNotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ArtifactCorrupt)
    async def _corrupt(_: Request, exc: ArtifactCorrupt):
        log.error("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)

    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory dblocks.server.registry.app:create_app_from_env`."""
    return create_app(RegistrySettings.from_env())
