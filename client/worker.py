"""The company's resident worker: torch, Opacus, the validated data and the SecAgg and ledger state loaded once,
answering the messages Flower's per-message ClientApp forwards to it (client/clientapp.py, client/workerwire.py).

    dbclient join ──starts, restarts──> worker  <──Unix socket (0600, private dir, per-join secret)── flwr-clientapp
                 └─runs─> SuperNode ──starts one per message──────────────────────────────────────────^

What it keeps the trust work's guarantees with:
  * the handlers are client/handlers.py, unchanged: the ledger reserves before any record is used, the memory
    check and the replay check come first, refusals are errors the server sees as dropouts;
  * which app runs is still decided by the app guard in the SuperNode (client/appguard.py): a FAB that is not
    the dblocks manifest never gets a ClientApp process, so it never reaches this socket;
  * only the company's user can reach it: the socket is 0600 in a 0700 directory, the peer's uid must be ours
    (SO_PEERCRED) and it must present this join's secret (constant-time compare);
  * a message is answered at most once (`Journal`): its id is written (fsynced) as started before its handler
    runs and as finished after. The same id again gets the kept reply of the first answer (never a second
    computation); an id a previous worker started but never finished (it was killed while answering) is
    refused, so a half-done task is never sent twice. Training is also guarded by the ledger's replay check.

Run by `dbclient join` (`WorkerSupervisor`), never by hand: `python -m dblocks.client.worker --socket PATH
--journal PATH [--data PATH ... --threads N]`, with the secret in $DBLOCKS_WORKER_SECRET.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .workerwire import SECRET_ENV, VERSION, peer_uid, recv_frame, recv_json, secret_matches, send_frame, send_json

KEPT_REPLIES = 64  # answered messages whose reply is kept for a repeat of the same id
JOURNAL_KEPT = 10_000  # journal lines kept when a worker starts (older ids cannot come back: Flower's TTL)


class Journal:
    """Append-only record of message ids: `started` before a handler runs, `finished` after (fsynced)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.started: set[str] = set()
        self.finished: set[str] = set()
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        for line in lines:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-write: that id was not started
                continue
            (self.started if e.get("event") == "started" else self.finished).add(str(e.get("id")))
        # ids a previous worker started and never finished: it died while answering them
        self.half_done = self.started - self.finished
        if len(lines) > JOURNAL_KEPT:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("\n".join(lines[-JOURNAL_KEPT:]) + "\n")
            os.replace(tmp, self.path)
        self._lock = threading.Lock()

    def write(self, message_id: str, event: str, **extra) -> None:
        with self._lock, open(self.path, "a") as f:
            f.write(json.dumps({"id": message_id, "event": event, "time": round(time.time(), 3), **extra}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        (self.started if event == "started" else self.finished).add(message_id)


class AnsweredOnce(RuntimeError):
    """The message id was answered (or half-answered by a worker that died) before: not answered again."""


@dataclass
class _Answer:
    done: threading.Event
    reply: object = None
    error: Exception | None = None


class CompanyWorker:
    """Answers forwarded messages with client/handlers.py's `company_app`, each message id at most once."""

    def __init__(self, secret: str, journal: Path):
        self.secret = secret
        self.journal = Journal(journal)
        self.uid = os.getuid()
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, _Answer] = OrderedDict()

    def serve_connection(self, sock: socket.socket) -> None:
        try:
            if peer_uid(sock) != self.uid:
                send_json(sock, {"ok": False, "error": "the company worker answers only its own user"})
                return
            header = recv_json(sock)
            if not secret_matches(header.get("secret"), self.secret):
                send_json(sock, {"ok": False, "error": "not this join's secret: refused"})
                return
            if header.get("v") != VERSION:
                text = f"channel version {header.get('v')}, this worker speaks {VERSION}"
                send_json(sock, {"ok": False, "error": text})
                return
            send_json(sock, {"ok": True})
            message, context = recv_frame(sock), recv_frame(sock)
        except (ConnectionError, OSError, ValueError):
            return
        header, frames = self.answer(message, context)
        try:
            send_json(sock, header)
            for frame in frames:
                send_frame(sock, frame)
        except OSError:
            pass  # the forwarder is gone; the answer stays kept for its id

    def answer(self, message: bytes, context: bytes) -> tuple[dict, tuple[bytes, ...]]:
        """A forwarded message (protobuf bytes) -> (header, frames) for the channel."""
        from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
        from flwr.proto.message_pb2 import Context as ProtoContext
        from flwr.proto.message_pb2 import Message as ProtoMessage

        msg = message_from_proto(ProtoMessage.FromString(message))
        ctx = context_from_proto(ProtoContext.FromString(context))
        try:
            reply = self.answer_message(msg, ctx)
        except Exception as e:  # noqa: BLE001 - every refusal goes back to Flower as the error reply it was before
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}, ()
        return {"ok": True}, (message_to_proto(reply).SerializeToString(), context_to_proto(ctx).SerializeToString())

    def answer_message(self, msg, ctx):
        """The reply of client/handlers.py's `company_app` to `msg` (ctx.state updated), each message id at most
        once: a repeat waits for and returns the first answer (or raises its error); an id a previous worker
        started, or whose answer is no longer kept, raises AnsweredOnce."""
        mid = msg.metadata.message_id
        with self._lock:
            kept = self._answers.get(mid) if mid else None
            if kept is None and mid in self.journal.half_done:
                raise AnsweredOnce(
                    f"message {mid} was being answered when the company worker stopped; it is not answered "
                    "again (a half-done task is never sent twice)"
                )
            if kept is None and mid in self.journal.finished:
                raise AnsweredOnce(f"message {mid} was already answered; it is not answered twice")
            owner = kept is None
            if kept is None:
                kept = _Answer(threading.Event())
                if mid:
                    self._answers[mid] = kept
                    while len(self._answers) > KEPT_REPLIES:
                        self._answers.popitem(last=False)
        if not owner:  # the same id again: the first answer, once it is there
            kept.done.wait()
            if kept.error is not None:
                raise kept.error
            return kept.reply
        if mid:  # with the message's type and when the server created it (delivery latency = time - created)
            meta = msg.metadata
            self.journal.write(mid, "started", type=meta.message_type, created=round(meta.created_at, 3))
        try:
            from .handlers import company_app

            kept.reply = company_app(message=msg, context=ctx)
            return kept.reply
        except Exception as e:
            kept.error = e
            raise
        finally:
            if mid:
                self.journal.write(mid, "finished")
            kept.done.set()


def warm_up(data: str | None, label_column: str, image_size: int, threads: int) -> None:
    """Load what every message would otherwise load: torch, Opacus, the trainer, SecAgg, the accountant, and
    the company's data (read once here; a task reads it through its run's contract, kept by handlers)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    import opacus  # noqa: F401 - imported for its import time

    from dblocks.privacy import dpsgd  # noqa: F401
    from dblocks.privacy.accounting import MechanismStep, epsilon
    from dblocks.privacy.secagg import flower  # noqa: F401

    from . import handlers, trainer  # noqa: F401

    epsilon([MechanismStep(1.0, 0.1, 1)], 1e-5, "prv")  # the accountant's first call builds its tables
    if data:
        from dblocks.shared.data import load_dataset

        load_dataset(data, label_column=label_column, image_size=image_size or None)


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM when `dbclient join` dies (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(
    socket_path: str, worker: CompanyWorker, parent: int | None = None, ready: threading.Event | None = None
) -> None:
    """Listen on `socket_path` (0600) and answer until SIGTERM or the parent process is gone; a connection is
    served once `ready` (the warm-up) is set."""
    if os.path.lexists(socket_path):
        os.unlink(socket_path)
    old = os.umask(0o177)  # the socket file is created 0600
    try:

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                if ready is not None:
                    ready.wait()
                worker.serve_connection(self.request)

        server = _Server(socket_path, Handler)
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent, server.shutdown), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        if os.path.lexists(socket_path):
            os.unlink(socket_path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="the company's resident worker (started by `dbclient join`)")
    ap.add_argument("--journal", required=True)
    ap.add_argument("--socket", help="answer forwarded messages on this Unix socket (secret in $" + SECRET_ENV + ")")
    ap.add_argument("--runtime", help="take ClientApp tasks from the SuperNode's Runtime API at this address")
    ap.add_argument("--superexec-secret-file", help="the SuperExec HMAC secret for --runtime")
    ap.add_argument("--data")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--image-size", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--parent", type=int)
    args = ap.parse_args(argv)
    # Ctrl-C at `dbclient join` reaches its whole process group: the join stops the worker (SIGTERM), not the key
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    secret = os.environ.get(SECRET_ENV, "")
    if args.socket and not secret:
        print(f"error: no {SECRET_ENV}: the company worker is started by `dbclient join`", file=sys.stderr)
        sys.exit(2)
    worker = CompanyWorker(secret, Path(args.journal))
    from .runtime import run_tasks  # every import of this thread before the warm-up thread starts (see below)

    # Warm up in a thread, so that SIGTERM and the parent watch work meanwhile; messages are taken only once it has
    # finished: two threads importing overlapping modules at once can see a partly initialised module (Python's
    # import-lock deadlock avoidance), which failed a worker at start with "partially initialized module 'typing'".
    ready = threading.Event()

    def warm() -> None:
        try:
            warm_up(args.data, args.label_column, args.image_size, args.threads)
        finally:
            ready.set()  # a failed warm-up (say, unreadable data) shows in the first message's answer instead

    threading.Thread(target=warm, daemon=True).start()
    if args.runtime:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        if args.parent is not None:
            threading.Thread(target=_watch_parent, args=(args.parent, stop.set), daemon=True).start()
        run_tasks(args.runtime, Path(args.superexec_secret_file).read_bytes(), worker, stop, ready)
    else:
        serve(args.socket, worker, args.parent, ready)


def _watch_parent(parent: int, then) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    then()


class WorkerSupervisor:
    """`dbclient join`'s side: start the worker, restart it whenever it exits (until `stop`), say so on the
    company's progress log. The private directory, the socket and the secret live as long as the join."""

    def __init__(
        self,
        *,
        journal: Path,
        data: Path | None,
        label_column: str = "label",
        image_size: int = 0,
        threads: int = 0,
        emit=print,
        restart_delay: float = 0.5,
        pid_file: Path | None = None,
        runtime: str | None = None,
    ):
        """runtime: the SuperNode's Runtime API address: the worker takes its ClientApp tasks there
        (client/runtime.py; the SuperNode runs with --isolation process and `superexec_secret_file`); None: it
        answers forwarded messages on `socket_path`."""
        from .workerwire import new_secret, private_dir

        self.directory = private_dir()
        self.socket_path = os.path.join(self.directory, "worker.sock")
        self.secret = new_secret()
        self.superexec_secret_file = os.path.join(self.directory, "superexec.secret")
        fd = os.open(self.superexec_secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_secret())
        self.journal, self.emit, self.restart_delay, self.pid_file = Path(journal), emit, restart_delay, pid_file
        self.argv = [
            sys.executable,
            "-m",
            "dblocks.client.worker",
            *(
                ["--runtime", runtime, "--superexec-secret-file", self.superexec_secret_file]
                if runtime
                else ["--socket", self.socket_path]
            ),
            "--journal",
            str(self.journal),
            "--label-column",
            label_column,
            "--image-size",
            str(int(image_size)),
            "--threads",
            str(int(threads)),
            "--parent",
            str(os.getpid()),
        ] + (["--data", str(data)] if data is not None else [])
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ, **{SECRET_ENV: self.secret})
        proc = subprocess.Popen(self.argv, env=env, preexec_fn=_die_with_parent)
        if self.pid_file is not None:  # where tests and operators find the worker
            self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def start(self) -> WorkerSupervisor:
        self.proc = self._spawn()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            assert self.proc is not None
            code = self.proc.wait()
            if self._stop.is_set():
                return
            self.restarts += 1
            self.emit(f"the company worker exited (code {code}); restarting it (restart {self.restarts})")
            self._stop.wait(self.restart_delay)
            if not self._stop.is_set():
                self.proc = self._spawn()

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


if __name__ == "__main__":
    main()
