"""#14.4: one approved company must not be able to fail the whole run. A malformed message from a node makes
that node a dropout (ping) or fails only its block's aggregation (re-run or skipped with the reason), never
the run. Fake Grid (the transport) and cohort stand-ins: see server_fakes.py."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict

from dblocks.server.federation.aggregation import DBlocksSecAgg
from dblocks.server.federation.config import RunConfig, SecAggConfig
from dblocks.server.federation.scheduler import NodeInfo
from dblocks.server.federation.serverapp import Federation

from .server_fakes import (
    TASK,
    B,
    CohortSecAgg,
    JointSecAgg,
    PingGrid,
    context,
    good_ping,
    registry_app,
    set_task_identity,
)

GOOD = [1001, 1002, 1003, 1004, 1005, 1006]
BAD = 1666


def _ping(**values) -> RecordDict:
    return RecordDict({"ping": ConfigRecord(values)})


# variant -> (reply content of the bad node, words the recorded reason must contain)
MALFORMED = {
    "missing ping record": (RecordDict({"pong": ConfigRecord({"memory_mb": 1.0})}), "no 'ping' config record"),
    "ping is not a config record": (RecordDict({"ping": ArrayRecord()}), "no 'ping' config record"),
    "non-numeric memory": (_ping(memory_mb="lots", budget_left=10.0), "memory_mb is a str"),
    "non-UTF-8 bytes": (_ping(memory_mb=b"\xff\xfe", budget_left=10.0), "memory_mb is a bytes"),
    "boolean memory": (_ping(memory_mb=True, budget_left=10.0), "memory_mb is a bool"),
    "NaN memory": (_ping(memory_mb=float("nan"), budget_left=10.0), "memory_mb is nan"),
    "negative memory": (_ping(memory_mb=-5.0, budget_left=10.0), "memory_mb is -5.0"),
    "NaN budget": (_ping(memory_mb=100.0, budget_left=float("nan")), "budget_left is nan"),
    "negative budget": (_ping(memory_mb=100.0, budget_left=-1.0), "budget_left is -1.0"),
    "list budget": (_ping(memory_mb=100.0, budget_left=[1.0, 2.0]), "budget_left is a list"),
}


def _cfg(tmp_path, **kw) -> RunConfig:
    base = RunConfig(
        run_id="robust",
        task=TASK,
        num_blocks=B,
        num_rounds=1,
        cohort_size=3,
        min_cohort=3,
        record_steps=2,
        accountant="rdp",
        secagg=SecAggConfig(mode="flower"),
        checkpoint_dir=str(tmp_path / "run" / "checkpoints"),
    )
    return replace(base, **kw)


@pytest.fixture(scope="module")
def ping_fed(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        set_task_identity(mp)
        fed = Federation(_cfg(tmp_path_factory.mktemp("ping")), PingGrid(GOOD + [BAD]), context())
        yield fed


@pytest.mark.parametrize("variant", sorted(MALFORMED))
def test_malformed_ping_reply_makes_the_node_a_dropout_with_the_reason(ping_fed, variant):
    """#14.4: each malformed ping reply drops only its node, with the reason recorded. On main, a missing
    'ping' record raised KeyError, a str/bytes/list value ValueError/TypeError out of `Federation.ping` (the
    run failed); a NaN, negative or boolean memory, or a 'ping' that is not a config record, made the node
    live (scheduled into a cohort); a NaN/negative budget dropped it with no reason anywhere."""
    content, reason = MALFORMED[variant]
    ping_fed.grid.replies = {BAD: content}
    ping_fed.dropped = {}
    live = ping_fed.ping(ping_fed.grid.get_node_ids())
    assert [n.node_id for n in live] == GOOD
    assert reason in ping_fed.dropped[BAD], ping_fed.dropped


def test_error_and_foreign_ping_replies_only_drop_their_node(ping_fed):
    """#14.4: an error reply is a dropout with its reason; a reply claiming to come from a node that was not
    asked is ignored, as is a second reply of the same node. On main the dropout left no reason (error) and a
    foreign reply with a budget counted as a live node that was never pinged."""

    def error(m):
        return Message(Error(code=0, reason="ClientApp crashed"), reply_to=m)

    def foreign(m):  # a reply whose source is node 4242, which was not asked
        return Message(good_ping(), reply_to=Message(RecordDict(), dst_node_id=4242, message_type="query.ping"))

    ping_fed.grid.replies = {BAD: error, 1001: foreign}
    ping_fed.dropped = {}
    live = [n.node_id for n in ping_fed.ping(ping_fed.grid.get_node_ids())]
    assert live == GOOD[1:] and 4242 not in live
    assert "ClientApp crashed" in ping_fed.dropped[BAD] and ping_fed.dropped[1001] == "no reply to the ping"


def test_malformed_ping_never_fails_the_run(tmp_path, monkeypatch):
    """#14.4: a node whose ping reply has no 'ping' record is a dropout of the round; the run finishes with
    both blocks released and the reason in status.json. On main, `Federation.run` raised KeyError: 'ping'
    and the run was marked failed."""
    set_task_identity(monkeypatch)
    grid = PingGrid(GOOD + [BAD], {BAD: MALFORMED["missing ping record"][0]})
    fed = Federation(_cfg(tmp_path), grid, context())
    fed.secagg = CohortSecAgg(fed)
    fed.evaluate = dict  # test accuracy is not under test here (and the slowest part)
    fed.run()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "finished" and status["rounds"][0]["blocks"] == [0, 1]
    assert "no 'ping' config record" in status["rounds"][0]["dropped"][str(BAD)]
    assert all(BAD not in cohort for _, _, cohort in fed.secagg.calls)


def test_block_aggregation_that_raises_is_skipped_with_reason_and_other_blocks_released(tmp_path, monkeypatch):
    """#14.4: an exception out of one block's aggregation (here: a non-UTF-8 client id, as a bad certificate
    would give) fails that block only: it is re-run once, then skipped with the reason in the registry's
    round reports; the other block is released and the run finishes. On main the exception went through
    `Federation.run` (UnicodeDecodeError) and the run was marked failed with no block released."""
    set_task_identity(monkeypatch)
    app, reg = registry_app(tmp_path / "registry")
    fed = Federation(_cfg(tmp_path, num_rounds=2), PingGrid(GOOD[:5] + [BAD]), context())
    _attach_registry(fed, reg["service"])
    fed.secagg = CohortSecAgg(fed, poison={BAD})
    fed.evaluate = dict  # test accuracy is not under test here (and the slowest part)
    fed.run()
    rounds = reg["service"].list_rounds(fed.rid)
    for r in (1, 2):
        poisoned = next(b for rr, b, c in fed.secagg.calls if rr == r and BAD in c)
        mine = [x for x in rounds if x["round"] == r and x["block_index"] == poisoned]
        assert [x["status"] for x in mine] == ["rerun", "skipped"], mine
        assert "UnicodeDecodeError" in mine[-1]["reason"] and "1666" in mine[-1]["reason"]
        other = [x for x in rounds if x["round"] == r and x["block_index"] == 1 - poisoned]
        assert [x["status"] for x in other] == ["completed"]
    assert reg["service"].get_run(fed.rid)["status"] == "finished"
    assert len(reg["service"].list_block_versions(fed.rid)) == 2  # one block released per round
    app.state.registry.db.dispose()


def test_shared_aggregation_that_raises_fails_no_other_block_for_good(tmp_path, monkeypatch):
    """#14.4: with dblocks' SecAgg+ all blocks share each exchange, so one node's malformed message can make
    the whole aggregation raise; the blocks are then re-run each on its own: the clean block is released,
    the poisoned one skipped with the reason, and the run finishes. On main the exception (ValueError) went
    through `Federation.run` and failed the run."""
    set_task_identity(monkeypatch)
    fed = Federation(_cfg(tmp_path, secagg=SecAggConfig(mode="dblocks")), PingGrid(GOOD[:5] + [BAD]), context())
    fed.secagg = JointSecAgg(fed, poison={BAD})
    fed.evaluate = dict  # test accuracy is not under test here (and the slowest part)
    fed.run()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "finished" and len(status["rounds"][0]["blocks"]) == 1
    assert fed.secagg.calls[0] == [0, 1] and sorted(fed.secagg.calls[1:]) == [[0], [1]]  # joint, then one by one


def _attach_registry(fed, service) -> None:
    """The run in the registry, as `dbserver run new` creates it, and the Federation talking to it."""
    run = service.create_run(
        task=fed.model.task,
        dataset={"name": TASK},
        num_blocks=B,
        schedule=fed.schedule.to_dict(),
        secagg={"mode": fed.cfg.secagg.mode},
        dp={"accountant": fed.cfg.accountant, "delta": fed.cfg.delta},
        num_rounds=fed.cfg.num_rounds,
    )
    service.set_status(run["id"], "running")
    fed.registry, fed.rid = service, run["id"]


def test_nodes_heard_at_the_last_unmask_are_not_pinged_unless_they_cannot_afford_a_round(ping_fed):
    """#17: a node whose status came with its unmask reply at the end of the last round is live without a ping
    (one exchange less per round); one whose status says it cannot afford one more round is pinged (the ping tells
    the company so) and dropped for budget; everyone else is pinged as before."""
    asked: list[int] = []

    def answer(budget):
        def reply(m):
            asked.append(m.metadata.dst_node_id)
            return Message(good_ping(budget_left=budget), reply_to=m)

        return reply

    ping_fed.grid.replies = {n: answer(1e6) for n in GOOD} | {BAD: answer(0.0)}
    ping_fed.dropped = {}
    known = {n: NodeInfo(n, 4000.0, 1e6) for n in GOOD[:4]} | {BAD: NodeInfo(BAD, 4000.0, 0.0)}
    live = [n.node_id for n in ping_fed.ping(ping_fed.grid.get_node_ids(), known=known)]
    assert sorted(asked) == sorted(GOOD[4:] + [BAD])
    assert sorted(live) == GOOD
    assert ping_fed.dropped[BAD].startswith("skipped for budget")


def test_statuses_come_from_this_rounds_unmask_replies_only(ping_fed):
    """#17: `Federation._statuses` reads the "ping" record of each unmask reply; a malformed one, another stage's
    reply and a reply without the record leave that node to be pinged."""
    secagg = DBlocksSecAgg(ping_fed.grid, {0: [(2,)]}, 1.0, 10.0, lambda *a: None)
    replies = secagg.protocol.exchange.replies
    replies[("unmask", 1001)] = good_ping(budget_left=3.0)
    replies[("unmask", 1002)] = RecordDict({"ping": ConfigRecord({"budget_left": -1.0})})
    replies[("unmask", 1003)] = RecordDict({"secagg": ConfigRecord({"stage": "unmask"})})
    replies[("confirm", 1004)] = good_ping()
    before, ping_fed.secagg = ping_fed.secagg, secagg
    try:
        got = ping_fed._statuses()
    finally:
        ping_fed.secagg = before
    assert got == {1001: NodeInfo(1001, 4000.0, 3.0)}


def test_the_first_round_waits_for_min_nodes_connected_companies_then_for_no_one(ping_fed, monkeypatch):
    """#17: `--min-nodes N` (RunConfig.min_nodes): the first round starts once N companies are connected, so a run
    can be submitted while they join; after `min_nodes_timeout` it starts with those there."""
    connected = iter([[1001], [1001, 1002], [1001, 1002, 1003]] + [[1001, 1002, 1003]] * 100)
    calls = []

    def get_node_ids():
        calls.append(1)
        return next(connected)

    monkeypatch.setattr(ping_fed.grid, "get_node_ids", get_node_ids)
    monkeypatch.setattr(ping_fed, "cfg", replace(ping_fed.cfg, min_nodes=3, min_nodes_timeout=5.0))
    assert ping_fed.wait_for_nodes(poll=0.01) == 3 and len(calls) == 3
    monkeypatch.setattr(ping_fed, "cfg", replace(ping_fed.cfg, min_nodes=4, min_nodes_timeout=0.05))
    assert ping_fed.wait_for_nodes(poll=0.01) == 3  # nobody else comes: it starts with the three
    monkeypatch.setattr(ping_fed, "cfg", replace(ping_fed.cfg, min_nodes=0))
    calls.clear()
    assert ping_fed.wait_for_nodes() == 0 and not calls  # 0: no waiting, no asking


def test_flowers_object_pull_retries_start_at_50_ms():
    """#17: in the SuperNode, the worker and the ServerApp an object of a message that is not stored yet is pulled
    again after 0.05 s (Flower 1.41: 1 s), doubling up to 1 s; this fails if a Flower release renames the knobs."""
    from flwr.supercore.inflatable import inflatable_utils as iu

    from dblocks.shared.procs import shorten_object_pull_retries

    saved = {fn: dict(fn.__kwdefaults__) for fn in (iu.pull_objects, iu.pull_and_inflate_object_from_tree)}
    try:
        shorten_object_pull_retries()
        for fn in saved:
            assert fn.__kwdefaults__["initial_backoff"] == 0.05 and fn.__kwdefaults__["backoff_cap"] == 1.0
    finally:
        for fn, d in saved.items():
            fn.__kwdefaults__ = d
