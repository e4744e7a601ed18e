"""The dblocks ClientApp Flower loads: a thin forwarder to the company's resident worker.

Flower 1.41 starts a fresh `flwr-clientapp` process for every message. This module imports only Flower and the
standard library (no torch, no Opacus, no data): each message goes over the company's private Unix socket
(node config `worker-socket`, set by `dbclient join`; client/workerwire.py) to the worker that `dbclient join`
keeps running with torch, Opacus, the validated data and the SecAgg and ledger state loaded
(client/worker.py), and the worker's reply and updated node state come back to Flower. The handlers
themselves (ping, dblocks SecAgg+, Flower SecAgg+) are in client/handlers.py.

Without `worker-socket` in the node configuration (in-process tests, Flower's simulation engine) the message is
handled here, by `handlers.company_app`, as before.
"""

from __future__ import annotations

import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from .workerwire import SECRET_ENV, WorkerFailed, exchange

app = ClientApp()

# names that used to live here (tests and bench/scale.py import them): served from client/handlers.py on use
_FROM_HANDLERS = {
    "company_app",
    "node_settings",
    "company_ledger",
    "memory_limit_mb",
    "progress_line",
    "say_if_unaffordable",
    "train_block",
    "company_data",
}


def __getattr__(name: str):
    if name in _FROM_HANDLERS:
        from . import handlers

        return getattr(handlers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def forward(msg: Message, context: Context) -> Message:
    """Answer `msg` by the company worker (or in this process without one); `context.state` takes the
    worker's updated node state."""
    path = context.node_config.get("worker-socket")
    if not path:
        from .handlers import company_app

        return company_app(message=msg, context=context)
    from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    secret = os.environ.get(SECRET_ENV)
    if not secret:
        raise WorkerFailed(f"no {SECRET_ENV} in this process's environment: it was not started by `dbclient join`")
    wait = float(context.node_config.get("worker-wait", 120.0))
    reply, state = exchange(
        str(path),
        secret,
        message_to_proto(msg).SerializeToString(),
        context_to_proto(context).SerializeToString(),
        wait,
    )
    context.state = context_from_proto(ProtoContext.FromString(state)).state
    return message_from_proto(ProtoMessage.FromString(reply))


@app.query("ping")
def ping(msg: Message, context: Context) -> Message:
    return forward(msg, context)


@app.train("secagg")
def secagg_upload(msg: Message, context: Context) -> Message:
    return forward(msg, context)


@app.query("secagg")
def secagg_stage(msg: Message, context: Context) -> Message:
    return forward(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return forward(msg, context)
