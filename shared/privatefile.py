"""Private files: keys and secrets written readable by their owner only (both sides write them: the operator's
CA and server keys and tokens, a company's node key)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class PrivateFileError(OSError):
    """A private key or secret could not be written safely (e.g. its path is a symbolic link)."""


def write_private(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` readable by its owner only (mode 0600), atomically.

    The bytes go to a new file beside `path`, created with mode 0600 from the start (O_CREAT | O_EXCL |
    O_NOFOLLOW, then fchmod 0600 whatever the umask), which then replaces `path` by rename. So an existing file's
    looser mode (say 0644) is never inherited, no reader ever sees a partly written key, and a symbolic link at
    `path` is refused rather than followed into the file it points at."""
    p = Path(path)
    if p.is_symlink():
        raise PrivateFileError(
            f"{p} is a symbolic link; a private key or secret is never written through a link "
            "(it could lead to a file others can read): remove the link and run the command again"
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p
