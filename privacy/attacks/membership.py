"""Membership inference against trained blocks, at the block's own noise levels.

Score of a record under a block: the block loss at `draws` fixed noise draws from the block's training
distribution (the same draws for every model, so scores are comparable), turned into a statistic that is roughly
Gaussian across models: for a classifier the logit-scaled confidence log p_y - log(1 - p_y) (LiRA), for a
generator the negative loss; averaged over the draws.

M models (target + shadows) are trained from the same received block on random halves of a population, each
record in exactly M/2 of them. Every model serves once as the target, the other M-1 as its shadows:
  * loss threshold (Yeom et al. 2018): the target's score itself;
  * LiRA online (Carlini et al. 2022): log N(s; mu_in, var) - log N(s; mu_out, var) with mu_in / mu_out the
    record's mean score over the shadows that did / did not train on it and a pooled variance per side.
Scores are pooled over the M targets; reported: AUC (bootstrap 95%), TPR at 0.1% and 1% FPR (Clopper-Pearson).
If a model is (eps, delta)-DP, any test has TPR <= e^eps FPR + delta; a violation is a failed audit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dblocks.shared.models import DenoisingClassifier
from dblocks.shared.training import TrainConfig, block_loss, draw_block_inputs, train_block

from .metrics import auc_interval, roc_metrics


@dataclass(frozen=True)
class MembershipConfig:
    models: int = 8  # target + shadows, even
    draws: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.models < 4 or self.models % 2:
            raise ValueError(f"membership needs an even number >= 4 of models, got {self.models}")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def record_scores(
    block: nn.Module, block_index: int, x: torch.Tensor, y: torch.Tensor, draws: int, seed: int, batch: int = 256
) -> np.ndarray:
    """[N] membership statistic of every record under `block` (see module docstring)."""
    block.eval()
    total = torch.zeros(len(x), dtype=torch.float64)
    for j in range(draws):
        g = torch.Generator().manual_seed(seed * 7919 + j)
        inputs = draw_block_inputs(block, block_index, x, y, generator=g, label_dropout=0.0)
        for i in range(0, len(x), batch):
            sl = slice(i, i + batch)
            part = type(inputs)(inputs.x[sl], inputs.y[sl], inputs.sigma[sl], inputs.z[sl], inputs.label[sl])
            if isinstance(block, DenoisingClassifier):
                logits = block(part.x, part.z, part.sigma)
                logp = F.log_softmax(logits.double(), -1)
                lp = logp.gather(1, part.y[:, None]).squeeze(1)
                others = torch.logsumexp(logp.scatter(1, part.y[:, None], float("-inf")), dim=1)
                total[sl] += lp - others
            else:
                total[sl] -= block_loss(block, part).double()
    return (total / draws).numpy()


def membership_masks(models: int, records: int, seed: int) -> np.ndarray:
    """[models, records] bool, each record in exactly models/2 models."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((models, records), bool)
    for i in range(records):
        masks[rng.permutation(models)[: models // 2], i] = True
    return masks


def train_models(
    block: nn.Module, block_index: int, x, y, masks: np.ndarray, cfg: TrainConfig, dp=None, progress=None
) -> list[nn.Module]:
    """One copy of `block` per mask row, trained on its members (plain, or DP-SGD when `dp` is given)."""
    from dblocks.privacy.dpsgd import train_block_dp

    out = []
    for i, mask in enumerate(masks):
        model = copy.deepcopy(block)
        idx = torch.as_tensor(np.nonzero(mask)[0])
        run_cfg = TrainConfig(**{**cfg.to_dict(), "seed": cfg.seed + i})
        if dp is None:
            train_block(model, block_index, x[idx], y[idx], run_cfg)
        else:
            train_block_dp(model, block_index, x[idx], y[idx], run_cfg, dp)
        out.append(model.eval())
        if progress:
            progress(i + 1, len(masks))
    return out


def lira_scores(scores: np.ndarray, masks: np.ndarray, target: int) -> np.ndarray:
    """Online LiRA statistic [N] for model `target`, from the other models as shadows."""
    shadow = np.arange(len(scores)) != target
    s, m = scores[shadow], masks[shadow]
    inn = np.where(m, s, np.nan)
    out = np.where(~m, s, np.nan)
    mu_in, mu_out = np.nanmean(inn, 0), np.nanmean(out, 0)
    var_in = np.nanvar(inn - mu_in) + 1e-12  # pooled over records (few shadows per record)
    var_out = np.nanvar(out - mu_out) + 1e-12
    t = scores[target]
    return (-((t - mu_in) ** 2) / (2 * var_in) - 0.5 * math.log(var_in)) - (
        -((t - mu_out) ** 2) / (2 * var_out) - 0.5 * math.log(var_out)
    )


@dataclass
class MembershipResult:
    loss_attack: dict
    lira: dict
    models: int
    records: int
    dp_epsilon: float | None
    dp_delta: float | None
    dp_violations: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    scores: np.ndarray, masks: np.ndarray, seed: int, epsilon: float | None = None, delta: float | None = None
) -> MembershipResult:
    """Pool every model-as-target; both attacks; check TPR <= e^eps FPR + delta when a DP claim is given."""
    m = len(scores)
    loss_in = np.concatenate([scores[t][masks[t]] for t in range(m)])
    loss_out = np.concatenate([scores[t][~masks[t]] for t in range(m)])
    lira = [lira_scores(scores, masks, t) for t in range(m)]
    lira_in = np.concatenate([lira[t][masks[t]] for t in range(m)])
    lira_out = np.concatenate([lira[t][~masks[t]] for t in range(m)])
    results = {}
    violations = []
    for name, (a, b) in {"loss_attack": (loss_in, loss_out), "lira": (lira_in, lira_out)}.items():
        r = roc_metrics(a, b)
        r["auc_interval"] = auc_interval(a, b, seed=seed, resamples=200).to_dict()
        results[name] = r
        if epsilon is not None and math.isfinite(epsilon):
            for f in (0.001, 0.01):
                tpr = r[f"tpr_at_{f:g}_fpr"]
                allowed = math.exp(epsilon) * f + (delta or 0.0)
                if tpr["resolved"] and tpr["low"] > allowed:
                    violations.append(
                        f"{name}: TPR {tpr['value']:.3f} (95% low {tpr['low']:.3f}) at FPR {f:g} exceeds "
                        f"e^eps FPR + delta = {allowed:.3f} for eps={epsilon:.3g}"
                    )
    return MembershipResult(results["loss_attack"], results["lira"], m, scores.shape[1], epsilon, delta, violations)


def membership_audit(
    block: nn.Module, block_index: int, x, y, cfg: TrainConfig, mcfg: MembershipConfig, dp=None, progress=None
) -> MembershipResult:
    """Train mcfg.models blocks on random halves of (x, y) from `block` and attack every one of them."""
    masks = membership_masks(mcfg.models, len(x), mcfg.seed)
    with torch.random.fork_rng():  # DP-SGD noise comes from the global generator: seeded, caller's state untouched
        torch.manual_seed(mcfg.seed)
        models = train_models(block, block_index, x, y, masks, cfg, dp, progress)
    scores = np.stack([record_scores(mod, block_index, x, y, mcfg.draws, mcfg.seed) for mod in models])
    eps = delta = None
    if dp is not None:
        from dblocks.privacy.accounting import MechanismStep
        from dblocks.privacy.accounting import epsilon as accountant_epsilon

        n = int(masks[0].sum())
        steps = dp.num_steps(n, cfg.epochs)
        eps, delta = (
            accountant_epsilon([MechanismStep(dp.noise_multiplier, dp.sample_rate(n), steps)], dp.delta, dp.accountant),
            dp.delta,
        )
    return evaluate(scores, masks, mcfg.seed, eps, delta)
