"""The Fleet gateway: the only port of the server side that faces the internet.

Flower 1.41's SuperLink serves three HTTP APIs on one port, told apart by path:
    /v1/fleet/*     Fleet API: SuperNodes register, pull messages, push replies (node-key signed requests)
    /v1/control/*   Control API: `flwr run`, node registration, logs (no authentication in open-source Flower)
    /v1/runtime/*   ServerApp runtime (the operator's own processes)
The SuperLink therefore binds to loopback, and this gateway terminates TLS on the public address and forwards
only `POST /v1/fleet/<name>` to it (over TLS, verified against our CA); every other method or path gets 404
and never reaches the SuperLink. Node authentication is end to end: the signed headers pass through
unchanged and the SuperLink checks them.

Bodies stream in both directions (no buffering); hop-by-hop headers are dropped; the peer address is added as
X-Forwarded-For.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

FLEET_PATH = re.compile(r"^/v1/fleet/[a-z0-9-]{1,64}$")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
}


@dataclass(frozen=True)
class GatewayConfig:
    upstream: str  # the SuperLink, e.g. "127.0.0.1:9091"
    ca: Path  # verifies the SuperLink's certificate
    timeout_s: float = 120.0


def create_app(cfg: GatewayConfig) -> Starlette:
    verify = ssl.create_default_context(cafile=str(cfg.ca))
    client = httpx.AsyncClient(
        base_url=f"https://{cfg.upstream}",
        verify=verify,
        timeout=cfg.timeout_s,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )

    async def forward(request: Request) -> Response:
        path = request.url.path
        if request.method != "POST" or not FLEET_PATH.match(path):
            return JSONResponse({"detail": "not found: this address serves only the Flower Fleet API"}, status_code=404)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        peer = request.client.host if request.client else "unknown"
        headers.append(("x-forwarded-for", peer))
        upstream_req = client.build_request("POST", path, headers=headers, content=request.stream())
        try:
            upstream = await client.send(upstream_req, stream=True)
        except httpx.TransportError as e:
            return JSONResponse({"detail": f"the SuperLink is not reachable: {type(e).__name__}"}, status_code=503)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            headers=out_headers,
            background=BackgroundTask(upstream.aclose),
        )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def serve(host: str, port: int, cfg: GatewayConfig, certfile: Path, keyfile: Path) -> None:
    """Serve the gateway with TLS until stopped (blocks)."""
    import uvicorn

    uvicorn.run(
        create_app(cfg),
        host=host,
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
    )
