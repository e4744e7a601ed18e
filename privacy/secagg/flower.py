"""Glue between the protocol's plain messages and Flower 1.41's Message API.

Wire format. A protocol message travels as a Flower `RecordDict` with two records: `secagg` (a ConfigRecord with
every bytes / str / int / list value) and `secagg.arrays` (an ArrayRecord with every numpy array: masked
inputs, revealed shares). Anything else in the RecordDict (the model weights and the task of the `upload`
stage) belongs to the application and is left alone.

Message types: `train.secagg` for the `upload` stage (the client trains, then masks), `query.secagg` for the
others (register, join, confirm, unmask). A ClientApp registers both and hands them to `handle`.

ServerApp side: `GridExchange(grid, ...)` is the protocol's `exchange` over `grid.send_and_receive` (or the
`send` it is given), and
`FlowerSecAgg` runs planning and rounds for per-block cohorts of node ids:

    secagg = FlowerSecAgg(grid, {"0": Layout(dim0, clip), "1": Layout(dim1, clip)}, timeout=60,
                          payload=lambda stage, node_id, blocks: RecordDict(...model and task of blocks[0]...))
    secagg.plan(1, {"0": [n1, n2, n3], "1": [n4, n5, n6]})
    for r in rounds:
        secagg.plan(r + 1, next_cohorts)            # before run(r): keeps steady-state rounds at 2 exchanges
        result = secagg.run(r)                      # result.aggregates[block].mean_update, .survivors

ClientApp side (state persisted in the node's Context between messages):

    @app.train("secagg")
    def upload(msg, context):
        return handle(msg, context, contribute=lambda plan, msg: Contribution(train_and_clip(plan.block, msg)))

    @app.query("secagg")
    def secagg(msg, context):
        return handle(msg, context)

Node configuration read by `client_from_context`: `secagg-identity` (path of the node's long-term keys, JSON,
created with mode 0600 if missing; default: keys live in the run's Context only) and `secagg-directory` (JSON
{client_id: identity public key hex} of pinned identities; default: trust on first use).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from .client import Contribution, SecAggClient
from .directory import DirectoryView, read_public_key
from .driver import RoundResult, plan_round, run_round
from .errors import ProtocolRefusal, ThresholdError
from .graph import Policy
from .keys import Identity, TrustStore
from .messages import Message as ProtocolMessage
from .plan import Plan
from .server import Layout, SecAggServer

CONFIG_RECORD = "secagg"
ARRAY_RECORD = "secagg.arrays"
STATE_RECORD = "dblocks.secagg"
MESSAGE_TYPES = {
    "register": "query.secagg",
    "join": "query.secagg",
    "upload": "train.secagg",
    "confirm": "query.secagg",
    "unmask": "query.secagg",
}


# wire ------------------------------------------------------------------------------------------------------------
def to_recorddict(msg: ProtocolMessage, into: RecordDict | None = None) -> RecordDict:
    """Protocol message -> RecordDict (arrays in an ArrayRecord, everything else in a ConfigRecord)."""
    config: dict[str, Any] = {}  # protocol values: ConfigRecord checks that each is a config value
    arrays: dict[str, Array] = {}
    for key, value in msg.items():
        if isinstance(value, np.ndarray):
            arrays[key] = Array(np.ascontiguousarray(value))
        elif isinstance(value, tuple):
            config[key] = list(value)
        else:
            config[key] = value
    out = into if into is not None else RecordDict()
    out[CONFIG_RECORD] = ConfigRecord(config)
    if arrays:
        out[ARRAY_RECORD] = ArrayRecord(arrays)
    return out


def from_recorddict(content: RecordDict) -> ProtocolMessage:
    """RecordDict -> protocol message; raises ProtocolRefusal if it carries none."""
    if CONFIG_RECORD not in content:
        raise ProtocolRefusal(f"message carries no {CONFIG_RECORD!r} record")
    msg: ProtocolMessage = {}
    for key, value in content[CONFIG_RECORD].items():
        msg[key] = list(value) if isinstance(value, (list, tuple)) else value
    if ARRAY_RECORD in content:
        arrays = content[ARRAY_RECORD]
        if not isinstance(arrays, ArrayRecord):
            raise ProtocolRefusal(f"message record {ARRAY_RECORD!r} is a {type(arrays).__name__}, not an ArrayRecord")
        for key, array in arrays.items():
            msg[key] = array.numpy()
    return msg


def flatten_arrays(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """A list of parameter arrays -> one float64 vector (the protocol aggregates flat vectors)."""
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)


def unflatten_arrays(vector: np.ndarray, shapes: Sequence[tuple[int, ...]], dtype=np.float32) -> list[np.ndarray]:
    """Inverse of flatten_arrays for the given shapes."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    if sum(sizes) != vector.size:
        raise ValueError(f"vector of {vector.size} values does not fit shapes totalling {sum(sizes)}")
    out, pos = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(vector[pos : pos + size].reshape(shape).astype(dtype))
        pos += size
    return out


# server side ------------------------------------------------------------------------------------------------------
Payload = Callable[[str, int, list[str]], RecordDict | None]


Send = Callable[[list[Message], float | None], Iterable[Message]]  # (messages, timeout) -> replies


class GridExchange:
    """The protocol's `exchange` over a Flower Grid: one `send_and_receive` per stage. A node whose reply is
    missing or an error (timeout, crash, refusal) is a dropout of that stage; the reasons land in `errors`.
    `send(messages, timeout)` delivers one stage (default: `grid.send_and_receive`); the ServerApp passes its
    own, which polls faster than Flower's 3 s.

    payload(stage, node_id, blocks) may add application records (model, task) to a node's request; `blocks`
    are the blocks of the node's instances in that request."""

    def __init__(
        self,
        grid,
        *,
        timeout: float | None = None,
        payload: Payload | None = None,
        group_id: str | None = None,
        send: Send | None = None,
    ):
        self.grid, self.timeout, self.payload, self.group_id = grid, timeout, payload, group_id
        self.send = send or (lambda messages, timeout: grid.send_and_receive(messages, timeout=timeout))
        self.errors: list[tuple[str, int, str]] = []
        self.replies: dict[tuple[str, int], RecordDict] = {}  # last reply content per (stage, node)

    def __call__(self, stage: str, requests: dict[str, ProtocolMessage]) -> dict[str, ProtocolMessage]:
        messages = []
        for cid, request in requests.items():
            node_id = int(cid)
            blocks = [key.split(":", 1)[1] for key in request.get("instances", [])]
            content = self.payload(stage, node_id, blocks) if self.payload else None
            content = to_recorddict(request, content if content is not None else RecordDict())
            messages.append(
                Message(
                    content=content,
                    dst_node_id=node_id,
                    message_type=MESSAGE_TYPES[stage],
                    group_id=self.group_id or str(request.get("round", "")),
                )
            )
        replies: dict[str, ProtocolMessage] = {}
        for reply in self.send(messages, self.timeout):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                self.errors.append((stage, node_id, str(reply.error.reason)))
                continue
            try:
                replies[str(node_id)] = from_recorddict(reply.content)
                self.replies[(stage, node_id)] = reply.content
            except ProtocolRefusal as err:
                self.errors.append((stage, node_id, str(err)))
        return replies


@dataclass
class FlowerSecAgg:
    """Per-block secure aggregation over a Flower Grid: every block of a round is one protocol instance, and
    all instances of a round share each exchange (one `send_and_receive` per stage for the whole round)."""

    grid: object
    layouts: Mapping[str, Layout]
    timeout: float | None = None
    payload: Payload | None = None
    policy: Policy = Policy()
    consistency_check: bool = False
    trust: TrustStore | None = None
    directory: bytes | None = None  # the signed directory of enrolled identities, relayed to the clients
    send: Send | None = None  # how one stage is delivered (GridExchange)

    def __post_init__(self):
        self.server = SecAggServer(
            policy=self.policy, trust=self.trust, consistency_check=self.consistency_check, directory=self.directory
        )
        self.exchange = GridExchange(self.grid, timeout=self.timeout, payload=self.payload, send=self.send)

    def plan(self, round_: int, cohorts: Mapping[str, Iterable[int]]) -> dict[str, Plan]:
        """Fix round `round_`'s per-block cohorts of node ids (registers nodes the server has not met)."""
        try:
            return plan_round(
                self.server, round_, {b: [str(n) for n in c] for b, c in cohorts.items()}, self.layouts, self.exchange
            )
        except ThresholdError as err:
            raise ThresholdError(f"{err}; node errors: {self.exchange.errors[-5:]}") from None

    def run(self, round_: int) -> RoundResult:
        """join (only nodes without keys) -> upload (train) -> [confirm] -> unmask, for all blocks of the round."""
        return run_round(self.server, round_, self.exchange)


# client side ------------------------------------------------------------------------------------------------------
def load_identity_key(path: str | Path) -> bytes:
    """The node's persistent SecAgg identity (Ed25519 private key, 32 bytes), created 0600 if missing.
    Its public key (`identity_public`) is what the operator enrols with the node."""
    p = Path(path)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # created by a concurrent message: read it below
        else:
            with os.fdopen(fd, "w") as f:
                json.dump({"v": 2, "signing": Identity("new").signing_bytes().hex()}, f)
    if p.stat().st_mode & 0o077:
        raise ValueError(f"{p} is readable by other users: chmod 600 {p}")
    data = json.loads(p.read_text())
    return bytes.fromhex(data["signing"])


def identity_public(path: str | Path) -> bytes:
    return Identity("me", load_identity_key(path)).public


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def new_client(client_id: str, node_config: Mapping, policy: Policy = Policy()) -> SecAggClient:
    """A fresh protocol client for this node, configured from the node configuration (see the module docstring)."""
    nc = node_config
    identity = Identity(client_id, load_identity_key(str(nc["secagg-identity"]))) if nc.get("secagg-identity") else None
    directory, trust = None, TrustStore(tofu=True)  # no directory key: simulations and tests only
    if nc.get("secagg-directory-key"):
        directory, trust = DirectoryView(read_public_key(Path(str(nc["secagg-directory-key"])))), TrustStore()
    return SecAggClient(
        client_id,
        identity,
        policy=policy,
        trust=trust,
        directory=directory,
        require_consistency=_flag(nc.get("secagg-require-consistency", False)),
    )


def client_from_context(context: Context, policy: Policy = Policy()) -> SecAggClient:
    """The node's protocol client: restored from the Context state, or created (`new_client`)."""
    record = context.state.config_records.get(STATE_RECORD)
    if record is not None and "state" in record:
        state = record["state"]
        if not isinstance(state, bytes):  # `save_client` stores the bytes of `export_state`
            raise TypeError(f"node state {STATE_RECORD!r} holds a {type(state).__name__}, not the client state bytes")
        return SecAggClient.from_state(state)
    return new_client(str(context.node_id), context.node_config, policy)


def save_client(context: Context, client: SecAggClient) -> None:
    context.state.config_records[STATE_RECORD] = ConfigRecord({"state": client.export_state()})


@contextlib.contextmanager
def _locked(path: Path):
    """An open file descriptor of `path` (created 0600) under an exclusive lock until the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write(fd: int, data: bytes) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def _handle_with_file_state(
    state_dir: Path, context: Context, request: ProtocolMessage, contribute, policy: Policy
) -> ProtocolMessage:
    """Read the run's state, answer, write it back, all under the state file's exclusive lock; the directory
    pins are carried over from (and back into) the node-wide pins file."""
    with _locked(state_dir / f"run-{int(context.run_id)}.json") as fd:
        data = _read(fd)
        client = (
            SecAggClient.from_state(data) if data else new_client(str(context.node_id), context.node_config, policy)
        )
        pins_path = state_dir / "directory-pins.json"
        if client.directory is not None:
            with _locked(pins_path) as pfd:
                pins = _read(pfd)
                if pins:
                    known = DirectoryView.from_dict(json.loads(pins))
                    if known.key == client.directory.key and known.version > client.directory.version:
                        client.directory.version = known.version
                    client.directory.seen = {**(known.seen or {}), **(client.directory.seen or {})}
        reply = client.handle(request, contribute)
        _write(fd, client.export_state())
        if client.directory is not None:
            with _locked(pins_path) as pfd:
                pins = _read(pfd)
                seen = {**(DirectoryView.from_dict(json.loads(pins)).seen or {})} if pins else {}
                seen.update(client.directory.seen or {})
                view = DirectoryView(client.directory.key, client.directory.version, seen, None)
                _write(pfd, json.dumps(view.to_dict()).encode())
    return reply


def handle(
    msg: Message,
    context: Context,
    contribute: Callable[[Plan, Message], Contribution] | None = None,
    policy: Policy = Policy(),
) -> Message:
    """Answer one protocol message in a ClientApp. Refusals raise (Flower returns them as error replies, which
    the server treats as a dropout) and leave the persisted state untouched."""
    request = from_recorddict(msg.content)
    wrapped = (lambda plan: contribute(plan, msg)) if contribute is not None else None
    state_dir = context.node_config.get("secagg-state")
    if state_dir:
        reply = _handle_with_file_state(Path(str(state_dir)), context, request, wrapped, policy)
    else:
        client = client_from_context(context, policy)
        reply = client.handle(request, wrapped)
        save_client(context, client)
    return Message(to_recorddict(reply), reply_to=msg)
