"""Runs rounds of the protocol over any transport, and an in-process transport for tests and benches.

A transport is a function `exchange(stage, {client_id: request}) -> {client_id: reply}`: one request/reply per
client, sent in parallel; a client missing from the replies dropped out of that stage. One call = one exchange
with each addressed client. A steady-state round (every member announced its keys in the previous round) is
exactly two calls, `upload` then `unmask` (three with the consistency check: `upload`, `confirm`, `unmask`);
the first round of a client adds `register` (once per session) and `join`. A client's replies certify its
prekeys a few rounds ahead; one that has none for a planned round (it sat rounds out) is registered again.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .client import Contribution, SecAggClient
from .errors import SecAggError, ThresholdError
from .messages import Message, message_bytes
from .plan import Plan
from .server import Aggregate, Layout, SecAggServer

Exchange = Callable[[str, dict[str, Message]], dict[str, Message]]


@dataclass
class RoundResult:
    round: int
    aggregates: dict[str, Aggregate]
    failures: dict[str, str]


def plan_round(
    server: SecAggServer,
    round_: int,
    cohorts: Mapping[str, Sequence[str]],
    layouts: Mapping[str, Layout],
    exchange: Exchange,
) -> dict[str, Plan]:
    """Register clients the server has no prekey of for round `round_` (one exchange, only if there are any),
    then fix the plans of round `round_`. Plan round r+1 before running round r so that round r's uploads
    announce its keys."""
    members = sorted({c for cohort in cohorts.values() for c in cohort})
    new = [c for c in members if not server.registered(c, round_)]
    if new:
        server.receive_register(exchange("register", server.register_requests(new, round_)))
    plans = {}
    for block, cohort in cohorts.items():
        present = [c for c in cohort if server.registered(c, round_)]
        if len(present) < 3:
            raise ThresholdError(
                f"round {round_} block {block}: only {len(present)} of {len(cohort)} members are "
                f"registered (at least 3 needed); registration problems: {server.events[-5:]}"
            )
        plans[block] = server.add_plan(round_, block, present, layouts[block])
    return plans


def run_round(server: SecAggServer, round_: int, exchange: Exchange) -> RoundResult:
    """join (only members without keys) -> upload -> [confirm] -> unmask; returns every block's aggregate."""
    joins = server.join_requests(round_)
    if joins:
        server.receive_join(exchange("join", joins))
    server.receive_upload(exchange("upload", server.upload_requests(round_)))
    confirms = server.confirm_requests(round_)
    if confirms:
        server.receive_confirm(exchange("confirm", confirms))
    aggregates, failures = server.receive_unmask(exchange("unmask", server.unmask_requests(round_)), round_)
    return RoundResult(round_, aggregates, failures)


@dataclass
class LocalNetwork:
    """In-process clients behind an `exchange` function, with scripted dropouts and cost accounting.

    contribute[cid](plan) -> Contribution gives each client's input. drop[(round, stage)] = ids that do not
    answer that stage (their request is still delivered unless `lose_requests`). Every exchange is counted per
    (round, client) in `exchanges`, request and reply bytes in `bytes_down` / `bytes_up`.
    """

    clients: dict[str, SecAggClient]
    contribute: dict[str, Callable[[Plan], Contribution]]
    drop: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    lose_requests: bool = True
    exchanges: Counter = field(default_factory=Counter)
    stages: dict = field(default_factory=lambda: defaultdict(list))
    bytes_down: Counter = field(default_factory=Counter)
    bytes_up: Counter = field(default_factory=Counter)
    refusals: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self, stage: str, requests: dict[str, Message]) -> dict[str, Message]:
        replies = {}
        for cid, request in requests.items():
            round_ = int(request["round"])
            self.exchanges[(round_, cid)] += 1
            self.stages[(round_, cid)].append(stage)
            self.bytes_down[(round_, cid)] += message_bytes(request)
            dropped = cid in self.drop.get((round_, stage), set())
            if dropped and self.lose_requests:
                continue
            try:
                reply = self.clients[cid].handle(request, self.contribute.get(cid))
            except SecAggError as err:
                self.refusals.append((cid, stage, str(err)))
                continue
            if dropped:
                continue
            self.bytes_up[(round_, cid)] += message_bytes(reply)
            replies[cid] = reply
        return replies
