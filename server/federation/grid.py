"""The ServerApp's transport: one exchange of messages with a set of nodes over Flower's Grid."""

from __future__ import annotations

import time

from flwr.app import Message


def send_and_receive(grid, messages: list[Message], timeout: float | None = None, poll: float = 0.25) -> list[Message]:
    """Like `Grid.send_and_receive`, but polls for replies every `poll` seconds (Flower's polls every 3 s, which
    adds 1.5 s on average to every exchange). Returns the replies that came within `timeout` seconds. Grids
    without push/pull (in-process test grids) are called as is."""
    if not (hasattr(grid, "push_messages") and hasattr(grid, "pull_messages")):
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    end = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or (end is not None and time.monotonic() >= end):
            break
        time.sleep(poll)
    return replies
