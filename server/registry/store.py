"""Content-addressed file store for block weights and audit artifacts.

A file with sha256 digest h (64 lowercase hex characters) lives at `<root>/sha256/h[:2]/h[2:]`. The path is
built only from a validated digest, never from a user-supplied name, so nothing written or read can fall
outside `root`. Writes go to a temporary file in the same folder, are fsynced and renamed into place (a
crash leaves either the whole file or none); reads hash the bytes again and refuse a file whose digest does
not match its name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactNotFound(LookupError):
    """No file with that digest in the store."""


class ArtifactCorrupt(RuntimeError):
    """A stored file whose bytes no longer hash to its name (disk damage or tampering)."""


def check_digest(digest: str) -> str:
    """`digest` if it is a sha256 hex digest (64 lowercase hex characters), else ValueError."""
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest (64 lowercase hex characters): {str(digest)[:80]!r}")
    return digest


class ContentStore:
    """Files addressed by the sha256 of their bytes, under one root directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        check_digest(digest)
        path = (self.root / "sha256" / digest[:2] / digest[2:]).resolve()
        if not path.is_relative_to(self.root):  # cannot happen with a checked digest; kept as a tripwire
            raise ValueError(f"artifact path {path} escapes the store {self.root}")
        return path

    def put(self, data: bytes) -> str:
        """Store `data` durably; returns its sha256 hex digest. Storing the same bytes twice is a no-op."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if path.exists() and path.stat().st_size == len(data):
            return digest
        new_folder = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        if new_folder:
            _fsync_dir(path.parent.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes stored under `digest`, after checking they still hash to it."""
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(f"no stored file with sha256 {digest}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactCorrupt(f"stored file {path} is corrupt: its bytes hash to {actual}, not {digest}")
        return data

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).exists()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
