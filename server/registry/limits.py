"""Request limits as plain ASGI middleware.

`BodySizeLimit`: a declared Content-Length over the limit is refused with 413 before the body is read; a body
that turns out longer while streaming (chunked uploads) is cut off with 413. Multipart and octet-stream uploads
get `max_upload_bytes`, everything else `max_json_bytes`.

`FiniteJsonBodies`: a JSON body holding a number that is not finite, or a string that is not Unicode text (a lone
UTF-16 surrogate such as "\\ud800", which JSON's escapes allow but no database or UTF-8 encoder takes), is refused
with 422 naming where it sits.
JSON (RFC 8259) has no NaN or Infinity, but Python's json module (which FastAPI uses) reads the literals
`NaN`, `Infinity` and `-Infinity`, and reads a number beyond the float range such as `1e999` as infinity.
Such a value would reach a free-form field (`metrics`, `stats`, `schedule`, ...) and be stored, or make the
validation error that names it impossible to render (a 500). Multipart requests carry JSON in form fields;
`api.common.parse_json_field` checks those with `non_finite_path`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app, *, max_upload_bytes: int, max_json_bytes: int):
        self.app, self.max_upload, self.max_json = app, max_upload_bytes, max_json_bytes

    def limit_for(self, headers: dict[bytes, bytes]) -> int:
        ctype = headers.get(b"content-type", b"").lower()
        return (
            self.max_upload
            if ctype.startswith((b"multipart/form-data", b"application/octet-stream"))
            else self.max_json
        )

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
    body = json.dumps(
        {
            "detail": f"request body is larger than the limit of {limit} bytes "
            f"({limit / 1024 / 1024:.1f} MiB); set DBLOCKS_MAX_UPLOAD_MB to raise the upload limit"
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---- finite JSON numbers ------------------------------------------------------------------------------------
Loc = tuple[str | int, ...]
# A non-finite value can only come from a NaN/Infinity literal or a number with a 3-digit exponent or 309+ digits;
# bodies without any of these (nearly all) are passed on without a second parse.
_MAYBE_NON_FINITE = re.compile(rb"NaN|Infinity|[eE][+-]?\d{3}|\d{309}")


def non_finite_path(text: str | bytes) -> Loc | None:
    """Where the first NaN or +-infinity sits in the JSON document `text` (keys and list indices from the root),
    or None if every number in it is finite or it is not JSON at all (the app's own parser reports that)."""
    raw = text.encode() if isinstance(text, str) else text
    if not _MAYBE_NON_FINITE.search(raw):
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return _first_non_finite(doc)


def _first_non_finite(doc: Any) -> Loc | None:
    stack: list[tuple[Any, Loc]] = [(doc, ())]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return loc
        elif isinstance(value, dict):
            stack.extend((v, (*loc, k)) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, (*loc, i)) for i, v in reversed(list(enumerate(value))))
    return None


# a lone surrogate can only arrive as a \\uD800-\\uDFFF escape (raw surrogate bytes are not UTF-8 at all)
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def surrogate_path(text: str | bytes) -> Loc | None:
    """Where the first string (value or key) holding a lone UTF-16 surrogate sits in the JSON document `text`,
    or None if all its strings are Unicode text or it is not JSON at all."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if not _MAYBE_SURROGATE.search(raw):
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[Any, Loc]] = [(doc, ())]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, str) and not _is_text(value):
            return loc
        if isinstance(value, dict):
            for k, v in reversed(value.items()):
                if not _is_text(k):
                    return (*loc, k.encode("utf-8", "backslashreplace").decode())
                stack.append((v, (*loc, k)))
        elif isinstance(value, list):
            stack.extend((v, (*loc, i)) for i, v in reversed(list(enumerate(value))))
    return None


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def surrogate_error(loc: Loc) -> dict:
    """A 422 `detail` entry for a string that is not Unicode text."""
    return {
        "type": "unicode_text",
        "loc": list(loc),
        "input": None,
        "msg": f"{'.'.join(str(p) for p in loc)} holds a lone UTF-16 surrogate (\\ud800-\\udfff); strings must be "
        "Unicode text",
    }


def non_finite_error(loc: Loc) -> dict:
    """One entry of a 422 `detail` list, shaped like FastAPI's validation errors (type, loc, msg, input)."""
    where = ".".join(str(p) for p in loc)
    return {
        "type": "finite_number",
        "loc": list(loc),
        "input": None,
        "msg": f"{where} is NaN or infinite; JSON numbers must be finite: send a finite number, or null where the "
        "field allows it",
    }


def _is_json(headers: dict[bytes, bytes]) -> bool:
    """What FastAPI parses as JSON: no Content-Type at all, application/json, or any */*+json type."""
    ctype = headers.get(b"content-type")
    if ctype is None:
        return True
    media = ctype.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class FiniteJsonBodies:
    """Reads a JSON request body to its end, refuses it with 422 if it holds a non-finite number, else hands the
    same bytes to the app. Sits inside `BodySizeLimit`, which bounds what is buffered here."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        reads_body = scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS")
        if not reads_body or not _is_json(dict(scope["headers"])):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see that
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        loc = non_finite_path(body)
        if loc is not None:
            return await _send_json(send, 422, {"detail": [non_finite_error(("body", *loc))]})
        loc = surrogate_path(body)
        if loc is not None:
            return await _send_json(send, 422, {"detail": [surrogate_error(("body", *loc))]})
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[dict], receive):
    async def replayed():
        return messages.pop(0) if messages else await receive()

    return replayed


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
