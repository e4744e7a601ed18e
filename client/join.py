"""`dbclient join`: validate the local data, start the company's resident worker, then run a Flower SuperNode
in this process.

The SuperNode only ever opens outbound connections to the SuperLink. `--worker runtime` (the default) starts
the company's resident worker (client/worker.py, client/runtime.py), which keeps torch, Opacus, the data and the
ledger and SecAgg state loaded and takes the SuperNode's ClientApp tasks itself (`--isolation process`); `dbclient
join` restarts it if it exits. `--worker forward` has Flower start one thin ClientApp process per message that
forwards it over a private Unix socket to the worker; `--worker off` handles each message in its own Flower
process (the way before). Waits that are not work are shortened: the SuperNode asks the SuperLink for messages
every `poll_seconds` (Flower: 3 s), and an object of a message pulled before it is stored is retried after 0.05 s
(Flower: 1 s; shared/procs.py `shorten_object_pull_retries`).

Secure aggregation: the node's SecAgg identity key is persistent (`secagg_key_path`, 0600, beside the node key;
the operator enrols its public key when approving the node), its peers are verified against the directory
signed by the operator's directory key (`--directory-key directory.pub`, given with ca.pem), and its protocol
state lives under `home/secagg` behind a file lock (see dblocks.privacy.secagg.flower).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from dblocks.shared.data import Dataset, load_dataset
from dblocks.shared.procs import flwr_env, free_port, shorten_object_pull_retries


def default_home() -> Path:
    return Path(os.environ.get("DBLOCKS_HOME", Path.home() / ".dblocks")) / "client"


def ledger_path(home: Path, data: Path) -> Path:
    """One ledger per data set, named by a fingerprint of its content (`data_fingerprint`), not its path: a copy
    of the same file composes into the same budget. A ledger that an earlier version kept under the hash of
    the path is carried over to the content's name (it holds what was spent on these records)."""
    from .ledger import data_fingerprint

    path = home / "ledgers" / f"{data_fingerprint(data)[:16]}.json"
    by_path = home / "ledgers" / f"{hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:16]}.json"
    if by_path.exists() and not path.exists():
        os.replace(by_path, path)
    return path


@dataclass(frozen=True)
class JoinOptions:
    server: str
    data: Path
    home: Path
    ca: Path | None = None
    key: Path | None = None
    insecure: bool = False
    epsilon_budget: float = 8.0
    delta: float = 1e-5
    memory_mb: float = 0.0
    label_column: str = "label"
    image_size: int = 0
    threads: int = 0  # torch threads for training (0: torch's default, all cores)
    runtime_port: int = 0
    trusted_entities: Path | None = None  # YAML {id: "ssh-ed25519 ..."}: signers whose apps may also run
    directory_key: Path | None = None  # the operator's SecAgg directory public key (directory.pub)
    require_consistency: bool = False  # refuse secure aggregation without the consistency check
    # the run's class list from the operator (--classes): the file is checked against it before joining, and a
    # task whose class list differs is refused (node config `classes`, see client/trainer.py read_company_data)
    classes: tuple[str, ...] | None = None
    worker: str = "runtime"  # WORKER_MODES: how the resident company worker (client/worker.py) gets messages
    poll_seconds: float = 0.5  # with the worker: how often the idle SuperNode asks the SuperLink for messages


WORKER_MODES = ("runtime", "forward", "off")
# runtime: the worker takes the SuperNode's ClientApp tasks itself (client/runtime.py; SuperNode --isolation process)
# forward: Flower starts a ClientApp process per message, which forwards it to the worker (client/clientapp.py)
# off:     Flower starts a ClientApp process per message, which handles it itself (torch, data: every message)


def budget_refusal(opts: JoinOptions) -> str | None:
    """Why joining with this budget is refused, or None: the data set's ledger has already spent more than
    --epsilon-budget (a budget cannot go below what is spent; every task would be refused)."""
    from .ledger import PrivacyLedger

    path = ledger_path(opts.home, opts.data.resolve())
    if not path.exists():
        return None
    ledger = PrivacyLedger(path, opts.epsilon_budget, opts.delta)
    if not ledger.entries:
        return None
    spent = ledger.spent()
    if spent <= opts.epsilon_budget:
        return None
    return (
        f"this data set's ledger ({path}) has already spent record-level epsilon {spent:.2f} at delta="
        f"{opts.delta:g}, more than --epsilon-budget {opts.epsilon_budget:g}; a budget cannot go below what is "
        f"spent: pass --epsilon-budget {math.ceil(spent * 100) / 100:g} or more, or keep this data set out"
    )


def secagg_key_path(opts: JoinOptions) -> Path:
    """The node's persistent SecAgg identity key: beside the node key (or in the home without one)."""
    return (opts.key.parent if opts.key is not None else opts.home) / "secagg.key"


def validate(opts: JoinOptions) -> Dataset:
    """Load the data exactly as the ClientApp will (with --classes: every label matched to the run's class list);
    a DataError here means nothing was sent."""
    return load_dataset(
        opts.data,
        label_column=opts.label_column,
        image_size=opts.image_size or None,
        classes=list(opts.classes) if opts.classes is not None else None,
    )


def encode_classes(names: tuple[str, ...] | list[str]) -> str:
    """The class list as node-config text: percent-encoded JSON (no quote, backslash or space reaches Flower's
    key=value parser, whatever the names hold); `decode_classes` reverses it."""
    return quote(json.dumps(list(names)), safe="")


def decode_classes(text: str) -> list[str] | None:
    return [str(c) for c in json.loads(unquote(text))] if text else None


def supernode_argv(
    opts: JoinOptions, worker_socket: str | None = None, superexec_secret: str | None = None, port: int = 0
) -> list[str]:
    """Flower's SuperNode command line. worker_socket: ClientApp processes forward to the worker there;
    superexec_secret: no ClientApp processes (--isolation process), the worker takes the tasks with this secret."""
    data = opts.data.resolve()
    node_config = " ".join(
        [
            f'data-path="{data}"',
            f'ledger-path="{ledger_path(opts.home, data)}"',
            f'progress-path="{opts.home / "progress.log"}"',
            f"epsilon-budget={float(opts.epsilon_budget)}",
            f"delta={float(opts.delta)}",
            f"memory-mb={float(opts.memory_mb)}",
            f'label-column="{opts.label_column}"',
            f"image-size={int(opts.image_size)}",
            f"threads={int(opts.threads)}",
            f'secagg-identity="{secagg_key_path(opts).resolve()}"',
            f'secagg-state="{(opts.home / "secagg").resolve()}"',
            f"secagg-require-consistency={'true' if opts.require_consistency else 'false'}",
        ]
        + ([f'secagg-directory-key="{opts.directory_key.resolve()}"'] if opts.directory_key is not None else [])
        + ([f'classes="{encode_classes(opts.classes)}"'] if opts.classes is not None else [])
        + ([f'worker-socket="{worker_socket}"'] if worker_socket else [])
    )
    if opts.directory_key is None and not opts.insecure:
        raise ValueError(
            "secure aggregation needs the operator's directory key: pass --directory-key directory.pub "
            "(given with ca.pem); without it a malicious server could substitute your peers' keys"
        )
    argv = [
        "flower-supernode",
        "--superlink",
        opts.server,
        "--node-config",
        node_config,
        "--port",
        str(port or opts.runtime_port or free_port()),
    ]
    if superexec_secret:
        argv += ["--isolation", "process", "--superexec-auth-secret-file", superexec_secret]
    if opts.insecure:
        argv.append("--insecure")
    else:
        if opts.ca is None:
            raise ValueError("TLS needs the server's CA certificate: pass --ca ca.pem (or --insecure for a local test)")
        argv += ["--root-certificates", str(opts.ca)]
    if opts.key is not None:
        argv += ["--auth-supernode-private-key", str(opts.key)]
    if opts.trusted_entities is not None:
        argv += ["--trusted-entities", str(opts.trusted_entities)]
    return argv


def follow(path: Path, emit, stop: threading.Event) -> None:
    """Call emit(line) for every line appended to `path` (the ClientApp's progress log) until stopped."""
    path.touch()
    with open(path) as f:
        f.seek(0, os.SEEK_END)
        while not stop.is_set():
            line = f.readline()
            if line:
                emit(line.rstrip())
            else:
                stop.wait(0.5)


def run_supernode(opts: JoinOptions, emit=print) -> None:
    """Start the company worker (unless opts.worker is False), then run the SuperNode in-process until it is
    stopped (blocks); progress lines go to emit(). Only the installed dblocks ClientApp (or an app signed by one
    of `opts.trusted_entities`) runs: see appguard."""
    from flwr.supernode.cli import flower_supernode

    from .appguard import AppGuard

    opts.home.mkdir(parents=True, exist_ok=True)
    progress = opts.home / "progress.log"

    def refusal(text: str) -> None:
        with open(progress, "a") as f:
            f.write(f"REFUSED: {text}\n")

    def note(text: str) -> None:
        with open(progress, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    AppGuard(on_refusal=refusal).install()
    supervisor = None
    port = opts.runtime_port or free_port()
    if opts.worker not in WORKER_MODES:
        raise ValueError(f"worker mode {opts.worker!r}: choose one of {', '.join(WORKER_MODES)}")
    if opts.worker != "off":
        from .worker import WorkerSupervisor
        from .workerwire import SECRET_ENV

        supervisor = WorkerSupervisor(
            journal=opts.home / "worker-journal.jsonl",
            data=opts.data.resolve(),
            label_column=opts.label_column,
            image_size=opts.image_size,
            threads=opts.threads,
            emit=note,
            pid_file=opts.home / "worker.pid",
            runtime=f"127.0.0.1:{port}" if opts.worker == "runtime" else None,
        )
        if opts.worker == "forward":
            os.environ[SECRET_ENV] = supervisor.secret  # Flower's processes (the forwarders) inherit it
            os.environ[SUPEREXEC_POLL] = str(min(opts.poll_seconds, 0.2))
        shorten_supernode_polls(opts.poll_seconds)
        shorten_object_pull_retries()
        supervisor.start()
    os.environ.update(flwr_env(opts.home / "flwr"))
    own_argv = [sys.executable, *sys.argv]  # `dbclient join ...` as started: re-run while the key waits
    sys.argv = supernode_argv(
        opts,
        worker_socket=supervisor.socket_path if supervisor and opts.worker == "forward" else None,
        superexec_secret=supervisor.superexec_secret_file if supervisor and opts.worker == "runtime" else None,
        port=port,
    )
    stop = threading.Event()
    threading.Thread(target=follow, args=(opts.home / "progress.log", emit, stop), daemon=True).start()
    _name_the_server_in_retries(opts.server)
    refused = _watch_for_activation_refusal()
    pause = os.environ.pop(APPROVAL_SLEEP, None)  # set by wait_for_approval before it re-ran this command
    if pause:
        time.sleep(float(pause))
    try:
        flower_supernode()
    except (Exception, SystemExit) as e:  # Flower ends a refused activation with sys.exit (its exit code 305)
        if opts.key is None or not (refused or key_not_approved(e)):
            raise
        if supervisor is not None:
            supervisor.stop()  # the re-run command starts its own
        wait_for_approval(opts, own_argv, emit)  # re-runs this command; never returns
    finally:
        stop.set()
        if supervisor is not None:
            supervisor.stop()


SUPEREXEC_POLL = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's process launcher asks for new tasks this often


def shorten_supernode_polls(idle: float, waiting: float = 0.1) -> None:
    """Flower 1.41's SuperNode loop sleeps 3 s after every empty pull from the SuperLink and 0.5 s per check
    while a ClientApp works on a message (`start_client_internal`, not configurable). Its module's `time` becomes
    one whose `sleep` waits `idle` seconds instead of the 3 s and `waiting` instead of the 0.5 s; nothing else
    of the module changes (the app guard's source checks are unaffected). Each idle pull is one small request
    to the SuperLink: 0.5 s keeps 6 companies at 12 requests per second."""
    import types

    import flwr.supernode.start_client_internal as sci

    def sleep(seconds: float) -> None:
        time.sleep(idle if seconds >= 1.0 else min(seconds, waiting))

    shim = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    shim.sleep = sleep
    sci.time = shim  # type: ignore[assignment]


APPROVAL_WAIT = "DBLOCKS_JOIN_APPROVAL_WAIT"  # seconds the next wait for approval lasts (doubles, up to 5 min)
APPROVAL_SLEEP = "DBLOCKS_JOIN_APPROVAL_SLEEP"  # the wait itself, done by the re-run command before it connects


def _watch_for_activation_refusal() -> list[str]:
    """A list that gets an item when Flower logs that the SuperLink refused to activate this node."""
    import logging

    seen: list[str] = []

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if key_not_approved(RuntimeError(record.getMessage())):
                seen.append(record.getMessage())

    logging.getLogger("flwr").addHandler(Watch())
    return seen


def key_not_approved(e: BaseException) -> bool:
    """The SuperLink refused to activate this node: its key is not (yet) registered, i.e. not approved."""
    text = f"{e} {getattr(e, 'details', lambda: '')()}" if callable(getattr(e, "details", None)) else str(e)
    return any(m in text for m in ("Failed to activate SuperNode", "No SuperNode found", "not recognized"))


def wait_for_approval(opts: JoinOptions, argv: list[str], emit=print) -> None:
    """Say the node key is not approved yet (with its fingerprint, which the operator sees), wait with backoff,
    then run `dbclient join` again in this process (exec: a fresh SuperNode), until the operator approves it.
    The re-run command waits before it connects: Flower force-exits this process a few seconds after its exit."""
    from .nodekey import public_key_fingerprint

    assert opts.key is not None
    pub = Path(str(opts.key) + ".pub")
    fp = public_key_fingerprint(pub.read_text()) if pub.exists() else "(no .pub file beside the key)"
    wait = float(os.environ.get(APPROVAL_WAIT, "5"))
    emit(
        f"the node key {pub} (fingerprint {fp}) is not approved by the operator at {opts.server} yet; "
        f"send them {pub} and the SecAgg identity; trying again in {wait:.0f} s"
    )
    os.environ[APPROVAL_SLEEP] = str(wait)
    os.environ[APPROVAL_WAIT] = str(min(300.0, wait * 2))
    sys.stdout.flush()
    os.execv(argv[0], argv)


def _name_the_server_in_retries(server: str) -> None:
    """Flower logs "Connection attempt failed, retrying in N seconds" with no address: add the server's."""
    import logging

    class NameServer(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if isinstance(record.msg, str) and record.msg.startswith("Connection attempt failed, retrying"):
                record.msg = record.msg + f" (the server {server} is not reachable; backing off)"
            return True

    logging.getLogger("flwr").addFilter(NameServer())
