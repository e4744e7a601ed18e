"""Federation pieces without processes: scheduling, ledger, update checks, noise, task verification."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dblocks.client.ledger import BudgetExceeded, PrivacyLedger
from dblocks.client.trainer import rebuild_block, train_task
from dblocks.privacy.accounting import MechanismStep, epsilon
from dblocks.privacy.mechanisms import add_central_noise, check_update, client_level_epsilon, clip_update
from dblocks.server.federation.model_state import GlobalModel
from dblocks.server.federation.scheduler import NodeInfo, assign
from dblocks.shared.data import load_builtin
from dblocks.shared.fedmsg import BlockTask, param_names
from dblocks.shared.presets import get_preset
from dblocks.shared.wire import BlockIntegrityError


def nodes(n, **kw):
    return [NodeInfo(1000 + i, **kw) for i in range(n)]


def test_round_robin_gives_distinct_balanced_cohorts_and_rotates():
    seen = {b: set() for b in range(4)}
    for r in range(1, 9):
        a = assign(nodes(12), 4, r, cohort_size=3, min_cohort=2)
        members = [n for c in a.cohorts.values() for n in c]
        assert len(members) == len(set(members)) == 12 and sorted(len(c) for c in a.cohorts.values()) == [3, 3, 3, 3]
        for b, c in a.cohorts.items():
            seen[b] |= set(c)
    assert all(len(s) > 6 for s in seen.values())  # nodes visit many blocks over rounds


def test_short_handed_rounds_serve_fewer_blocks_with_a_reason_and_rotate():
    served = []
    for r in range(1, 5):
        a = assign(nodes(5), 4, r, cohort_size=3, min_cohort=2)
        assert len(a.cohorts) == 2 and all(len(c) >= 2 for c in a.cohorts.values())
        assert len(a.skipped) == 2 and all("fewer than the minimum cohort of 2" in m for m in a.skipped.values())
        served.append(tuple(sorted(a.cohorts)))
    assert len(set(served)) > 1
    assert assign(nodes(1), 2, 1, 3, 2).cohorts == {}


def test_adapt_blocks_trains_only_the_chosen_blocks_with_all_companies():
    from dblocks.server.federation.config import RunConfig

    for r in range(1, 5):
        a = assign(nodes(12), 4, r, cohort_size=6, min_cohort=3, blocks=(0, 1))
        assert sorted(a.cohorts) == [0, 1] and not a.skipped  # blocks 2, 3 are not in the run: not "skipped"
        assert sorted(len(c) for c in a.cohorts.values()) == [6, 6]
    assert assign(nodes(12), 4, 1, 3, 3).cohorts == assign(nodes(12), 4, 1, 3, 3, blocks=(0, 1, 2, 3)).cohorts
    with pytest.raises(ValueError, match="0..3"):
        assign(nodes(12), 4, 1, 3, 3, blocks=(4,))
    assert RunConfig("r", adapt_blocks=[1, 0, 1]).adapt_blocks == (0, 1)  # from run.json: a list
    with pytest.raises(ValueError, match="adapt_blocks"):
        RunConfig("r", num_blocks=2, adapt_blocks=(2,))


def test_ledger_composes_persists_and_refuses(tmp_path):
    path = tmp_path / "ledger.json"
    led = PrivacyLedger(path, budget=5.0, accountant="rdp")  # rdp: fast; the logic is the same
    step = MechanismStep(1.0, 0.05, 40)
    one = led.check(step, 1e-5)
    led.settle(led.reserve("run", 1, 0, 0, step, 1e-5, 100))
    led.settle(led.reserve("run", 2, 1, 0, step, 1e-5, 100))  # another block on the same records composes
    again = PrivacyLedger(path, budget=5.0, accountant="rdp")
    assert len(again.entries) == 2 and again.spent() == pytest.approx(epsilon([step, step], 1e-5, "rdp"))
    assert again.spent() > one
    with pytest.raises(BudgetExceeded, match="over the budget 5"):
        for r in range(3, 20):
            again.settle(again.reserve("run", r, 0, 0, step, 1e-5, 100))
    assert again.spent() <= 5.0  # never recorded past the budget
    with pytest.raises(BudgetExceeded, match="delta"):
        again.check(step, 1e-3)
    path.write_text("{broken")
    with pytest.raises(ValueError, match="corrupt"):
        PrivacyLedger(path, budget=5.0)


def test_clip_and_check_update():
    d = [np.full((3, 4), 2.0, np.float32), np.full(5, -1.0, np.float32)]
    c, norm = clip_update(d, 1.0)
    assert norm == pytest.approx(np.sqrt(12 * 4 + 5)) and np.sqrt(sum((x**2).sum() for x in c)) == pytest.approx(
        1.0, rel=1e-5
    )
    check_update(c, [(3, 4), (5,)], 1.0)
    with pytest.raises(ValueError, match="shape"):
        check_update(c, [(4, 3), (5,)], 1.0)
    with pytest.raises(ValueError, match="exceeds the clip"):
        check_update(d, [(3, 4), (5,)], 1.0)
    bad = [c[0].copy(), c[1].copy()]
    bad[0][0, 0] = np.nan
    with pytest.raises(FloatingPointError):
        clip_update(bad, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        check_update(bad, [(3, 4), (5,)], 1.0)


def test_central_noise_is_sized_on_the_clients_actually_aggregated():
    rng = np.random.default_rng(0)
    mean = [np.zeros(200_000, np.float32)]
    for k in (2, 5):
        noised, std = add_central_noise(mean, clip=1.0, noise_multiplier=2.0, num_aggregated=k, rng=rng)
        assert std == pytest.approx(2.0 / k) and noised[0].std() == pytest.approx(2.0 / k, rel=0.01)
    assert client_level_epsilon(0.0, 3, 1e-5, "rdp") == float("inf")
    assert (
        client_level_epsilon(5.0, 1, 1e-5, "rdp")
        < client_level_epsilon(5.0, 4, 1e-5, "rdp")
        < client_level_epsilon(1.0, 4, 1e-5, "rdp")
    )


def _task(model, b=0, **kw):
    base = dict(
        run_id="r",
        round=1,
        block_index=b,
        attempt=0,
        spec_json=model.blocks[b].spec.to_json(),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.1,
        steps=3,
        delta=1e-5,
        accountant="prv",
        lr=1e-3,
        weight_decay=0.0,
        update_clip=0.5,
    )
    return BlockTask(**{**base, **kw})


def test_client_round_trains_only_its_block_and_returns_a_clipped_delta(tmp_path):
    p = get_preset("digits")
    model = GlobalModel.initial(p, p.noise_schedule(2), seed=0)
    data = load_builtin("digits").subset(np.arange(200))
    ledger = PrivacyLedger(tmp_path / "l.json", budget=8.0)
    task = _task(model, b=1)
    assert BlockTask.from_config(json.loads(json.dumps(task.to_config()))) == task
    upd = train_task(task, model.weights_arrays(1), data, ledger)
    assert [d.shape for d in upd.delta] == model.param_shapes(1)
    assert np.sqrt(sum((d.astype(np.float64) ** 2).sum() for d in upd.delta)) <= 0.5 + 1e-5
    assert upd.report.sample_rate == pytest.approx(0.1) and upd.report.steps == 3
    assert ledger.entries[-1].block_index == 1 and ledger.entries[-1].epsilon_after == pytest.approx(upd.epsilon_after)
    with pytest.raises(RuntimeError, match="replayed"):
        train_task(task, model.weights_arrays(1), data, ledger)
    retry = train_task(BlockTask(**{**task.to_config(), "attempt": 1}), model.weights_arrays(1), data, ledger)
    assert len(ledger.entries) == 2 and retry.epsilon_after > upd.epsilon_after  # a re-run is another release


def test_client_refuses_tampered_weights_and_spent_budgets(tmp_path):
    p = get_preset("digits")
    model = GlobalModel.initial(p, p.noise_schedule(2), seed=0)
    arrays = model.weights_arrays(0)
    arrays[3] = arrays[3] + 0.01
    with pytest.raises(BlockIntegrityError, match="sha256"):
        rebuild_block(_task(model), arrays)
    with pytest.raises(BlockIntegrityError):  # weights of block 1 under block 0's spec
        rebuild_block(_task(model), model.weights_arrays(1))
    data = load_builtin("digits").subset(np.arange(100))
    ledger = PrivacyLedger(tmp_path / "l.json", budget=0.5)
    with pytest.raises(BudgetExceeded):
        train_task(_task(model), model.weights_arrays(0), data, ledger)
    assert ledger.entries == []  # nothing spent, nothing trained


def test_global_model_checkpoint_round_trip(tmp_path):
    p = get_preset("digits")
    m = GlobalModel.initial(p, p.noise_schedule(2), seed=0)
    m.checkpoint_dir = tmp_path
    delta = [np.full(s, 0.01, np.float32) for s in m.param_shapes(1)]
    m.apply_update(1, delta, 1.0, round=3)
    m.save_checkpoint(1)
    m2 = GlobalModel.initial(p, p.noise_schedule(2), seed=0)
    m2.resume_from_checkpoint(tmp_path)
    assert m2.blocks[1].round == 3 and m2.blocks[0].round == 0 and m2.blocks[1].spec.sha256 == m.blocks[1].spec.sha256
    for a, b in zip(m2.weights_arrays(1), m.weights_arrays(1)):
        np.testing.assert_array_equal(a, b)
    assert param_names(m.blocks[1].module)[0] == "tokenizer.proj.weight"


def test_a_company_that_trained_is_asked_while_one_more_round_fits_its_budget(tmp_path, monkeypatch):
    """The affordability check in `Federation.ping` charges what one more round *adds* to the company's epsilon
    over its releases in this run (composition is sublinear), not one round's standalone epsilon: a company
    with 8 of budget that spent 5.2 on round 1 can afford a round 2 that brings it to about 7.4. Before, it was
    dropped ("budget left 2.8 is below one round's 5.16") and the demo's second round had no live company."""
    from flwr.app import Context, RecordDict

    from dblocks.privacy.accounting import MechanismStep, epsilon
    from dblocks.server.federation.config import RunConfig
    from dblocks.server.federation.serverapp import Federation

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
    from server_fakes import PingGrid, good_ping, set_task_identity

    set_task_identity(monkeypatch)
    cfg = RunConfig(
        run_id="afford",
        task="digits",
        num_blocks=2,
        num_rounds=2,
        cohort_size=3,
        min_cohort=3,
        record_noise=1.92,
        record_clip=1.0,
        record_sample_rate=0.5,
        record_steps=15,
        checkpoint_dir=str(tmp_path / "ck"),
    )
    step = MechanismStep(1.92, 0.5, 15)
    one, two = epsilon([step], 1e-5, "prv"), epsilon([step, step], 1e-5, "prv")
    left = 8.0 - one
    assert two - one < left < one  # the case: affordable at the margin, not by the standalone figure
    fed = Federation(
        cfg,
        PingGrid([1, 2], {1: good_ping(budget_left=left), 2: good_ping(budget_left=left)}),
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
    )
    fed.releases.trained(1, 0, 0, [1], step)  # node 1 trained in round 1; node 2 never did (full cost applies)
    live = [n.node_id for n in fed.ping([1, 2])]
    assert live == [1]
    assert "what one more round adds" in fed.dropped[2]
