"""bench/secagg.py compares the protocols fairly: Flower's workflow and ours go through the same push-then-poll
loop with the same interval, and the steady state leaves round 1 and incomplete rounds out for both alike."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_app():
    return load("secagg_bench_app", BENCH / "secagg_app" / "secagg_bench_app.py")


class Reply:
    def __init__(self, to: str):
        self.metadata = type("Meta", (), {"reply_to_message_id": to})()
        self.content = {}

    def has_error(self):
        return False


class PushPullGrid:
    """A grid with push/pull only: each pushed message is answered on the second pull after its push."""

    def __init__(self):
        self.pulls = 0
        self.pending: dict[str, int] = {}

    def send_and_receive(self, messages, *, timeout=None):  # Flower's own loop (3 s poll): must not be used
        raise AssertionError("the bench must not use Grid.send_and_receive")

    def push_messages(self, messages):
        ids = [f"m{len(self.pending) + i}" for i in range(len(messages))]
        self.pending.update({i: self.pulls + 2 for i in ids})
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        return [Reply(i) for i in ids if self.pending[i] <= self.pulls]


def test_flower_workflow_polls_with_the_same_loop_and_interval_as_ours(bench_app):
    grid = bench_app.CountingGrid(PushPullGrid(), poll=0.001)
    replies = grid.send_and_receive([type("Msg", (), {"content": {}})() for _ in range(3)], timeout=5)
    assert len(replies) == 3
    assert grid.exchanges == 1 and grid.sent == 3 and grid.received == 3
    assert grid._grid.pulls == 2  # pulled until the last reply came, nothing more
    assert 0 < grid.exchange_seconds[0] < 1


def test_steady_state_leaves_out_first_last_and_incomplete_rounds_for_both(bench_app):
    secagg = load("bench_secagg", BENCH / "secagg.py")

    def row(r, proto, seconds, aggregated=6):
        return {
            "round": r,
            "protocol": proto,
            "seconds": seconds,
            "ok": aggregated > 0,
            "aggregated": aggregated,
            "bytes_down": 1,
            "bytes_up": 1,
            "exchanges": 4 if proto == "flower" else 2,
            "exchange_seconds": [seconds / 2],
            "max_abs_error": 1e-7,
        }

    rows = [row(1, "flower", 100.0), row(1, "dblocks", 100.0), row(6, "flower", 1.0), row(6, "dblocks", 1.0)]
    rows += [row(r, "flower", 40.0) for r in (2, 3, 4)] + [row(5, "flower", 90.0, aggregated=5)]
    rows += [row(r, "dblocks", s) for r, s in ((2, 10.0), (3, 12.0), (4, 14.0))]
    summary, ratio = secagg.steady_state(rows, nodes=6, rounds=6)
    assert summary["flower"]["steady_rounds"] == 3 and summary["flower"]["incomplete_rounds"] == 1
    assert summary["dblocks"]["median_round_seconds"] == 12.0 and summary["flower"]["median_round_seconds"] == 40.0
    assert ratio == pytest.approx(0.3)
    assert secagg.steady_state([row(1, "flower", 1.0), row(2, "dblocks", 1.0)], nodes=6, rounds=3)[1] is None
