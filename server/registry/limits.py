"""Request size limits as plain ASGI middleware: a declared Content-Length over the limit is refused with 413
before the body is read; a body that turns out longer while streaming (chunked uploads) is cut off with 413.
Multipart and octet-stream uploads get `max_upload_bytes`, everything else `max_json_bytes`."""

from __future__ import annotations

import json


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app, *, max_upload_bytes: int, max_json_bytes: int):
        self.app, self.max_upload, self.max_json = app, max_upload_bytes, max_json_bytes

    def limit_for(self, headers: dict[bytes, bytes]) -> int:
        ctype = headers.get(b"content-type", b"").lower()
        return self.max_upload if ctype.startswith((b"multipart/form-data", b"application/octet-stream")) else self.max_json

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        limit = self.limit_for(headers)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_413(send, limit)
        seen = 0
        exceeded = False
        replaced = False

        async def counting_receive():
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message):
            """Once the body overran, whatever the app answers (it may turn the error into a 400) becomes our 413."""
            nonlocal replaced
            if exceeded:
                if not replaced:
                    replaced = True
                    await _send_413(send, limit)
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not replaced:
                await _send_413(send, limit)


async def _send_413(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body is larger than the limit of {limit} bytes "
                                 f"({limit / 1024 / 1024:.1f} MiB); set DBLOCKS_MAX_UPLOAD_MB to raise the upload limit"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
