"""What the ServerApp tests of tests/security/test_server_*.py run against: a fake transport and cohorts.

`PingGrid` is the Grid (Flower's transport, outside the product): it answers each `query.ping` with a real
Flower reply Message whose content the test chooses per node. `CohortSecAgg` stands in for the companies'
side of secure aggregation (which has its own tests): every cohort returns the all-zero mean of its members
unless a test makes a block's aggregation raise. Everything else is the product: Federation, scheduling,
accounting with Opacus, the registry on SQLite.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from dblocks.server.federation.aggregation import AggregateOutcome, DBlocksSecAgg

TASK, B = "digits", 2


def good_ping(memory_mb: float = 4000.0, budget_left: float = 1e6) -> RecordDict:
    return RecordDict({"ping": ConfigRecord({"memory_mb": memory_mb, "budget_left": budget_left})})


class PingGrid:
    """Nodes `ids`; `replies[n]` is node n's ping reply content (a RecordDict, or a callable msg -> Message)."""

    def __init__(self, ids: list[int], replies: dict[int, RecordDict | Callable] | None = None):
        self.ids = list(ids)
        self.replies = replies or {}

    def get_node_ids(self):
        return list(self.ids)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            n = m.metadata.dst_node_id
            assert m.metadata.message_type == "query.ping", "only pings go over this grid"
            reply = self.replies.get(n, good_ping())
            out.append(reply(m) if callable(reply) else Message(reply, reply_to=m))
        return out


def zero_mean(fed, b: int) -> list[np.ndarray]:
    return [np.zeros(s, np.float32) for s in fed.model.param_shapes(b)]


class CohortSecAgg:
    """Flower-mode stand-in: `aggregate(grid, context, block, round, cohort, weights, task)` per block.
    A cohort holding a node of `poison` raises, as a protocol parsing that node's malformed message would."""

    def __init__(self, fed, poison: set[int] = frozenset()):
        self.fed, self.poison = fed, set(poison)
        self.calls: list[tuple[int, int, list[int]]] = []  # (round, block, cohort)

    def aggregate(self, grid, context, b, r, cohort, weights, task_config) -> AggregateOutcome:
        self.calls.append((r, b, list(cohort)))
        bad = self.poison & set(cohort)
        if bad:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, f"client id in the certificate of node {min(bad)}")
        return AggregateOutcome(b, list(cohort), mean=zero_mean(self.fed, b), survivors=list(cohort))


class JointSecAgg(DBlocksSecAgg):
    """dblocks-mode stand-in: all blocks of a call in one aggregation, which raises if any cohort holds a
    node of `poison` (one node's message breaks the shared exchange)."""

    def __init__(self, fed, poison: set[int] = frozenset()):  # noqa: D107 - no protocol state needed
        self.fed, self.poison, self.calls = fed, set(poison), []
        self.ahead = None

    def aggregate(self, cohorts, upcoming=None):
        self.calls.append(sorted(cohorts))
        if any(self.poison & set(c) for c in cohorts.values()):
            raise ValueError("share from a node does not decode")
        return {
            b: AggregateOutcome(b, list(c), mean=zero_mean(self.fed, b), survivors=list(c)) for b, c in cohorts.items()
        }

    def drop_plan_ahead(self) -> None:
        self.ahead = None

    def statuses(self) -> dict:  # no unmask replies here: every node is pinged each round
        return {}


def set_task_identity(monkeypatch) -> None:
    """What Flower's runtime sets in a ServerApp process (Message() needs it)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def registry_app(directory):
    """The registry app on SQLite in `directory`, and a RegistryClient per role name in ("service", "operator")."""
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

    from dblocks.server.registry.app import create_app
    from dblocks.server.registry.auth import issue_token
    from dblocks.server.registry.config import RegistrySettings
    from dblocks.shared.registry_client import RegistryClient

    app = create_app(RegistrySettings.in_directory(directory))
    clients = {}
    with app.state.registry.db.writer() as s:
        tokens = {role: issue_token(s, name=role, role=role, created_by="tests")[1] for role in ("service", "operator")}
    for role, tok in tokens.items():
        clients[role] = RegistryClient("http://testserver", tok, http=TestClient(app))
    return app, clients
