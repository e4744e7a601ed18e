"""A revoked token is refused at once, in every registry process on this host.

The token cache (`auth.TokenCache`) spares each request a token query for a few seconds. A revocation made in
another process (`dbserver tokens revoke` works on the database directly; another uvicorn worker) would
otherwise be honoured only when the cached entry expires. Every revocation touches `tokens.revoked` in the
registry's data directory, and the cache drops everything when that file changed (one stat() per request).
Registries on several hosts sharing one database see another host's revocation within `auth.CACHE_SECONDS`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .auth import Principal, TokenCache

MARKER = "tokens.revoked"


def marker_path(data_dir: Path) -> Path:
    return Path(data_dir) / MARKER


def announce_revocation(data_dir: Path) -> None:
    """Tell every registry process on this host that a token was revoked (they drop their token caches)."""
    p = marker_path(data_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
        f.write("r")  # grows by one byte per revocation: the size changes even where mtime is coarse
    os.utime(p)


def _stamp(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class RevocationAwareTokenCache(TokenCache):
    """A TokenCache that is emptied when `tokens.revoked` changes; `clear()` (a revocation in this process)
    announces it to the other processes too."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self._marker = marker_path(data_dir)
        self._seen = _stamp(self._marker)
        self._check = threading.Lock()

    def get(self, token_hash: str) -> Principal | None:
        now = _stamp(self._marker)
        if now != self._seen:
            with self._check:
                self._seen = now
            super().clear()
            return None
        return super().get(token_hash)

    def clear(self) -> None:
        super().clear()
        try:
            announce_revocation(self._marker.parent)
        except OSError:  # a read-only data directory: this process is still right
            return
        self._seen = _stamp(self._marker)
