"""The local channel between Flower's per-message ClientApp (client/clientapp.py) and the company's resident
worker (client/worker.py). Imports no torch: the forwarder side must start in a fraction of a second.

Channel. A Unix stream socket in a private directory (mode 0700, created by `dbclient join`); the socket file
is 0600 and the worker also checks the peer's user id (SO_PEERCRED). Every connection carries one exchange:

    forwarder: frame(header JSON {"v": 1, "secret": hex})
    worker:    frame({"ok": true})  or  frame({"ok": false, "error": text}) and close (wrong user, secret, version)
    forwarder: frame(Message protobuf)  frame(Context protobuf)
    worker:    frame({"ok": true})  frame(reply Message protobuf)  frame(Context protobuf)
           or  frame({"ok": false, "error": text})   (the handler refused or failed: Flower's error reply)

A frame is a 4-byte big-endian length and that many bytes (at most `MAX_FRAME`). The secret is 32 random bytes
per `dbclient join` (`new_secret`), handed to the worker and to Flower's processes in the environment
(`SECRET_ENV`, readable only by the company's own user) and compared in constant time (`hmac.compare_digest`).
Messages and contexts are Flower's own protobufs (`flwr.common.serde`), so nothing is unpickled.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import socket
import struct
import time

SECRET_ENV = "DBLOCKS_WORKER_SECRET"
MAX_FRAME = 1 << 30  # 1 GiB: far above a block's weights; a larger length is a broken or hostile peer
VERSION = 1


class WorkerUnavailable(RuntimeError):
    """The company worker did not accept a connection in time (it is not running or not restarted yet)."""


class WorkerFailed(RuntimeError):
    """The worker refused or failed the message (its reason), or stopped while answering it."""


def new_secret() -> str:
    return secrets.token_hex(32)


def secret_matches(given: object, expected: str) -> bool:
    """Constant-time comparison of the secret a peer sent with this join's."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack(">I", len(data)) + data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError(f"the peer closed the channel after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> bytes:
    (n,) = struct.unpack(">I", recv_exact(sock, 4))
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes is over the limit {MAX_FRAME}")
    return recv_exact(sock, n)


def send_json(sock: socket.socket, value: dict) -> None:
    send_frame(sock, json.dumps(value).encode())


def recv_json(sock: socket.socket) -> dict:
    value = json.loads(recv_frame(sock))
    if not isinstance(value, dict):
        raise ConnectionError("the header frame is not a JSON object")
    return value


def connect(path: str, wait: float, poll: float = 0.05) -> socket.socket:
    """A connection to the worker's socket, retried for up to `wait` seconds while the socket is missing or
    refuses (the worker is starting or `dbclient join` is restarting it)."""
    end = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() >= end:
                raise WorkerUnavailable(
                    f"the company worker at {path} did not answer within {wait:.0f} s ({e.__class__.__name__}); "
                    "is `dbclient join` running?"
                ) from None
            time.sleep(poll)


def exchange(path: str, secret: str, message: bytes, context: bytes, wait: float) -> tuple[bytes, bytes]:
    """Send one message (and its context) to the worker, return the reply message and the updated context.
    Sent once: if the channel breaks after the request went out, WorkerFailed (never re-sent; the worker's
    journal would refuse it anyway, see client/worker.py)."""
    end = time.monotonic() + wait
    while True:  # until admitted; nothing of the message has been sent before, so a retry sends nothing twice
        sock = connect(path, max(0.0, end - time.monotonic()))
        try:
            send_json(sock, {"v": VERSION, "secret": secret})
            admitted = recv_json(sock)
            break
        except (ConnectionError, OSError, ValueError) as e:  # e.g. a worker that died as it accepted
            sock.close()
            if time.monotonic() >= end:
                raise WorkerFailed(f"the company worker closed the channel before the message was sent ({e})") from None
            time.sleep(0.05)
    with sock:
        if not admitted.get("ok"):
            raise WorkerFailed(str(admitted.get("error", "the company worker refused the channel")))
        try:
            send_frame(sock, message)
            send_frame(sock, context)
            header = recv_json(sock)
            if not header.get("ok"):
                raise WorkerFailed(str(header.get("error", "the company worker refused the message")))
            return recv_frame(sock), recv_frame(sock)
        except (ConnectionError, OSError, ValueError) as e:
            raise WorkerFailed(
                f"the company worker stopped while answering ({e}); the message is not sent again "
                "(a half-done task is never answered twice)"
            ) from None


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process on the other end of a Unix socket (Linux SO_PEERCRED: pid, uid, gid)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def private_dir(parent: str | None = None) -> str:
    """A fresh directory only this user can enter (0700), short enough for a socket path (108 bytes)."""
    import tempfile

    d = tempfile.mkdtemp(prefix="dblocks-worker-", dir=parent)
    os.chmod(d, 0o700)
    return d
