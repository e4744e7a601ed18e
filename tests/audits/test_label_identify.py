"""The attack battery (label inference, matched-filter identification) and its strongest-attack verdict, on a tiny
classifier block trained enough that its gradients depend on the image (a tiny pool keeps this fast)."""

import pytest
import torch

from dblocks.privacy.attacks.battery import (
    AttackTest,
    BatteryConfig,
    Observed,
    Verdict,
    attack_outcomes,
    strongest_attack_verdict,
)
from dblocks.privacy.attacks.identify import CandidatePool
from dblocks.privacy.attacks.label import blind_guess, label_chance
from dblocks.privacy.attacks.local import LocalTraining, local_update
from dblocks.privacy.attacks.metrics import minimum_detectable_rate
from dblocks.privacy.attacks.runner import AuditSpec, AuditTarget, run_audit
from dblocks.shared.models import ArchConfig, build_block
from dblocks.shared.schedule import NoiseSchedule
from dblocks.shared.training import TrainConfig, train_block

POOL = 64
SCHEDULE = NoiseSchedule(num_blocks=3)
ARCH = ArchConfig(
    kind="classifier", input="image", num_classes=10, width=32, depth=1, heads=2, image_size=8, patch_size=2
)


@pytest.fixture(scope="module")
def target(digits):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: a second thread only contends on a shared machine
    torch.manual_seed(0)
    block = build_block(ARCH, SCHEDULE)
    train_block(block, 1, digits.x[:512], digits.y[:512], TrainConfig(epochs=6, batch_size=32, lr=3e-3, seed=0))
    torch.set_num_threads(before)
    return AuditTarget(block.eval(), 1, {"training_interval": SCHEDULE.training_interval(1)}, digits)


def test_positive_controls_on_raw_single_record_updates(target):
    """Every single-record attack recovers the label / finds the record in a raw update."""
    pool = CandidatePool(target.data.x[:POOL], target.data.y[:POOL])
    g = torch.Generator().manual_seed(1)
    obs = []
    for i in (3, 17, 40):
        delta, _ = local_update(target.block, 1, pool.x[i : i + 1], pool.y[i : i + 1], LocalTraining(), g)
        obs.append(Observed(delta, torch.tensor([i]), pool.y[i : i + 1]))
    out = attack_outcomes(target.block, 1, obs, pool, BatteryConfig())
    for attack in ("label-head-bias", "label-class-embedding", "label-matched-filter", "identify-top1"):
        assert out.hits[attack] == [1, 1, 1], (attack, out.hits[attack])
    assert out.chance["identify-top1"] == pytest.approx(1 / POOL)


def test_seeded_release_at_z_1e4_fails(target, tmp_path):
    spec = AuditSpec(attack="battery", observe="release", noise_multiplier=1e-4, targets=4, population=POOL, seed=3)
    rec = run_audit(target, spec, tmp_path)
    assert rec.verdict == Verdict.FAIL, rec.reasons
    assert any(r.startswith("BEATS CHANCE") and "identify" in r for r in rec.reasons)
    assert rec.metrics["tests"]["identify-top1"]["hits"] >= 2


def test_dp_release_passes_with_power(target, tmp_path):
    """K = 8, C = 1, z = 1 (the bench's correct release), seen by the K-1 colluding clients: one record's clipped
    delta under noise z C. Nothing beats chance and every counted attack had the power to see a leak."""
    spec = AuditSpec(
        attack="battery",
        observe="release",
        adversary="colluding",
        clients=8,
        noise_multiplier=1.0,
        targets=12,
        population=POOL,
    )
    rec = run_audit(target, spec, tmp_path)
    assert rec.verdict == Verdict.PASS, rec.reasons
    assert all(t["mde"] <= t["target_rate"] for t in rec.metrics["tests"].values())


def test_low_power_gives_inconclusive(target, tmp_path):
    """One target cannot exclude chance for a label: no pass without power."""
    spec = AuditSpec(attack="battery", observe="release", noise_multiplier=1.0, targets=1, population=POOL)
    rec = run_audit(target, spec, tmp_path)
    assert rec.verdict == Verdict.INCONCLUSIVE, rec.reasons
    assert any(r.startswith("NO POWER") for r in rec.reasons)


def _test(attack, hits, trials, chance, p, control=True):
    return AttackTest(
        attack,
        hits,
        trials,
        chance,
        p,
        {"value": hits / trials, "low": 0.0, "high": 1.0},
        chance + (1 - chance) / 2,
        minimum_detectable_rate(trials, chance, 0.05 / 2),
        {"passed": control, "hits": 1, "trials": 1, "p_value": 0.01 if control else 0.5},
    )


def test_verdict_rule():
    powered = [_test("label-x", 1, 20, 0.1, 0.9), _test("identify-x", 0, 20, 0.01, 1.0)]
    assert strongest_attack_verdict(powered)[0] == Verdict.PASS
    leak = [_test("label-x", 9, 20, 0.1, 1e-4), _test("identify-x", 0, 20, 0.01, 1.0)]
    assert strongest_attack_verdict(leak)[0] == Verdict.FAIL  # label accuracy above chance counts against a pass
    weak = [_test("label-x", 0, 2, 0.1, 1.0), _test("identify-x", 0, 20, 0.01, 1.0)]
    assert strongest_attack_verdict(weak)[0] == Verdict.INCONCLUSIVE
    no_control = [_test("label-x", 1, 20, 0.1, 0.9, control=False), _test("identify-x", 0, 20, 0.01, 1.0)]
    assert strongest_attack_verdict(no_control)[0] == Verdict.INCONCLUSIVE


def test_label_chance_is_the_best_blind_guess():
    prior = torch.full((10,), 0.1).numpy()
    assert label_chance(prior, 1) == pytest.approx(0.1)
    assert blind_guess(prior, 8).max() == 1  # eight different classes beat any repeated guess
    assert label_chance(prior, 8) == pytest.approx(1 - 0.9**8)
