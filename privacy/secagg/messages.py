"""Message layout: flat dicts whose values are bytes, str, int, lists of str/bytes, or numpy arrays.

Flat so that a transport can carry them as they are (Flower: numpy arrays in an ArrayRecord, the rest in a
ConfigRecord). Per-instance fields are named '<instance>/<field>' and per-peer ones '<instance>/<field>/<peer>',
where <instance> is '<round>:<block>'. Every request carries 'stage', 'session' and 'round'.

Stages and the fields each side sends (A = members that announced keys, S = members whose masked input arrived):

register  server: -                                   client: cert
join      server: instances, <i>/plan, <i>/cert/<v>   client: instances, <i>/ann, <i>/share/<v>
upload    server: instances, <i>/plan, <i>/announced (A), <i>/ann/<v>, <i>/cert/<v>, <i>/share/<v>;
                  next, <j>/plan, <j>/cert/<w>        (plans of the client's next-round instances)
          client: instances, <i>/masked (array); next, <j>/ann, <j>/share/<w>
confirm   server: instances, <i>/announced, <i>/survivors      client: <i>/confirm (signature on the view)
unmask    server: instances, <i>/announced, <i>/survivors [, <i>/signers, <i>/signatures]
          client: instances, <i>/peers, <i>/kinds ('b' self-seed / 'e' masking key), <i>/shares (array),
                  <i>/view (signature on the view)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ProtocolRefusal

Message = dict[str, Any]

STAGES = ("register", "join", "upload", "confirm", "unmask")


def field(instance: str, name: str, peer: str | None = None) -> str:
    return f"{instance}/{name}" if peer is None else f"{instance}/{name}/{peer}"


def get(msg: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str = "") -> Any:
    """msg[key] checked for presence and type; raises ProtocolRefusal naming the field."""
    if key not in msg:
        raise ProtocolRefusal(f"message lacks field {key!r}{what}")
    value = msg[key]
    if kind is list:
        if not isinstance(value, (list, tuple)):
            raise ProtocolRefusal(f"field {key!r} must be a list")
        return list(value)
    if kind is np.ndarray:
        if not isinstance(value, np.ndarray):
            raise ProtocolRefusal(f"field {key!r} must be a numpy array")
        return value
    if kind is bytes and isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if kind is int and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(kind, type) and kind not in (bytes, int) and isinstance(value, kind):
        return value
    raise ProtocolRefusal(f"field {key!r} has type {type(value).__name__}, expected {kind}")


def header(stage: str, session: bytes, round_: int) -> Message:
    return {"stage": stage, "session": session, "round": int(round_)}


def check_header(msg: Mapping[str, Any], stage: str, session: bytes | None) -> int:
    if msg.get("stage") != stage:
        raise ProtocolRefusal(f"expected a {stage!r} message, got {msg.get('stage')!r}")
    got = get(msg, "session", bytes)
    if session is not None and got != session:
        raise ProtocolRefusal("message is for another session")
    return get(msg, "round", int)


def message_bytes(msg: Mapping[str, Any]) -> int:
    """Approximate payload size: array bytes + bytes/str lengths (for cost accounting in tests and benches)."""
    total = 0
    for key, value in msg.items():
        total += len(key)
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, (bytes, bytearray, str)):
            total += len(value)
        elif isinstance(value, (list, tuple)):
            total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in value)
        else:
            total += 8
    return total
