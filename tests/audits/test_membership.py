import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dblocks.privacy.attacks.membership import MembershipConfig, lira_scores, membership_audit, membership_masks
from dblocks.privacy.attacks.metrics import roc_metrics
from dblocks.shared.training import TrainConfig


def test_roc_metrics_match_sklearn_and_flag_unresolved_fprs():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.7, 1, 300), rng.normal(0, 1, 500)
    r = roc_metrics(a, b)
    assert r["auc"] == pytest.approx(roc_auc_score(np.r_[np.ones(300), np.zeros(500)], np.r_[a, b]))
    assert not r["tpr_at_0.001_fpr"]["resolved"] and r["tpr_at_0.01_fpr"]["resolved"]
    assert r["tpr_at_0.01_fpr"]["low"] <= r["tpr_at_0.01_fpr"]["value"] <= r["tpr_at_0.01_fpr"]["high"]


def test_masks_put_every_record_in_half_the_models():
    m = membership_masks(6, 50, seed=0)
    assert (m.sum(0) == 3).all()


def test_lira_separates_a_planted_membership_signal():
    rng = np.random.default_rng(1)
    masks = membership_masks(8, 400, seed=1)
    per_record = rng.normal(
        0, 3, 400
    )  # records differ a lot: a global threshold is weak, per-record calibration is not
    scores = per_record + 1.0 * masks + rng.normal(0, 0.3, masks.shape)
    lira = lira_scores(scores, masks, 0)
    assert roc_metrics(lira[masks[0]], lira[~masks[0]])["auc"] > 0.85
    assert roc_metrics(scores[0][masks[0]], scores[0][~masks[0]])["auc"] < 0.7


def test_overfitted_block_leaks_membership(fresh_block, digits):
    res = membership_audit(
        fresh_block("classifier"),
        1,
        digits.x[:64],
        digits.y[:64],
        TrainConfig(epochs=40, batch_size=16, lr=3e-3),
        MembershipConfig(models=4, draws=4),
    )
    assert max(res.loss_attack["auc"], res.lira["auc"]) > 0.6
    assert res.records == 64 and res.models == 4
