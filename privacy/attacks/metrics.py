"""Reconstruction and membership metrics, with confidence intervals.

Images live in [-1, 1] (data range 2). PSNR = 10 log10(range^2 / MSE) per image. SSIM: Gaussian window
(7 x 7, sigma 1.5; smaller images use their own size), constants (0.01 range)^2 and (0.03 range)^2, mean over
the image. IIP (image identifiability precision): share of reconstructions whose nearest neighbour (L2) in a
candidate pool holding the true record is the true record; chance = 1 / pool size.
Baselines: the mean record (the pool's mean image) and a random record (another pool record) as the
"reconstruction" of each target. Means get percentile-bootstrap 95% intervals; proportions Clopper-Pearson.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from scipy.stats import beta, rankdata

DATA_RANGE = 2.0


@dataclass(frozen=True)
class Estimate:
    """A measured value with its 95% interval and the number of trials it rests on."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB [N] (inf for a perfect reconstruction, capped at 200 dB)."""
    mse = (recon.float().clamp(-1, 1) - target.float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(DATA_RANGE**2 / mse.clamp_min(1e-20))).clamp(max=200.0)


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [N] for [N, C, H, W] images in [-1, 1]."""
    a, b = recon.float().clamp(-1, 1), target.float()
    c = a.shape[1]
    size = min(7, a.shape[-1], a.shape[-2])
    w = _gaussian_window(size).expand(c, 1, size, size).contiguous()
    conv = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731 ('valid' windows, as skimage)
    mu_a, mu_b = conv(a), conv(b)
    var_a, var_b, cov = conv(a * a) - mu_a**2, conv(b * b) - mu_b**2, conv(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def identified(recon: torch.Tensor, target_index: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """[N] bool: is the nearest pool record (L2) to each reconstruction its own target (pool[target_index])?"""
    d = torch.cdist(recon.flatten(1).float().clamp(-1, 1), pool.flatten(1).float())
    return d.argmin(1) == target_index


def match_order(recon: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reorder a batch of reconstructions to the targets (minimum total MSE): batch attacks lose the order."""
    cost = torch.cdist(recon.flatten(1).float().clamp(-1, 1), targets.flatten(1).float()).numpy()
    rows, cols = linear_sum_assignment(cost)
    out = torch.empty_like(recon)
    out[torch.as_tensor(cols)] = recon[torch.as_tensor(rows)]
    return out


def bootstrap_mean(values, seed: int = 0, resamples: int = 2000) -> Estimate:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(1)
    return Estimate(float(v.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)), len(v))


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> Estimate:
    if trials == 0:
        return Estimate(float("nan"), 0.0, 1.0, 0)
    a = (1 - confidence) / 2
    lo = 0.0 if successes == 0 else float(beta.ppf(a, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - a, successes + 1, trials - successes))
    return Estimate(successes / trials, lo, hi, trials)


@dataclass
class ReconstructionScore:
    """Scores of reconstructions of n target records against a pool of candidates."""

    psnr: Estimate
    ssim: Estimate
    iip: Estimate
    iip_chance: float
    share_above_20db: Estimate
    mean_record_psnr: Estimate
    random_record_psnr: Estimate
    psnr_over_mean_baseline: Estimate
    per_target_psnr: list[float]

    def metrics(self) -> dict:
        out = {
            k: getattr(self, k).to_dict()
            for k in (
                "psnr",
                "ssim",
                "iip",
                "share_above_20db",
                "mean_record_psnr",
                "random_record_psnr",
                "psnr_over_mean_baseline",
            )
        }
        out["iip_chance"] = self.iip_chance
        out["per_target_psnr"] = self.per_target_psnr
        return out

    @property
    def iip_at_chance(self) -> bool:
        """The 95% interval of IIP contains the chance rate (or lies below it)."""
        return self.iip.low <= self.iip_chance


def score_reconstructions(
    recon: torch.Tensor, targets: torch.Tensor, target_pool_index: torch.Tensor, pool: torch.Tensor, seed: int = 0
) -> ReconstructionScore:
    """recon, targets: [n, C, H, W]; pool: [P, C, H, W] candidate records with pool[target_pool_index] = targets."""
    n = len(targets)
    p = psnr(recon, targets)
    s = ssim(recon, targets) if recon.dim() == 4 else torch.full((n,), float("nan"))
    ident = identified(recon, target_pool_index, pool)
    mean_img = pool.float().mean(0, keepdim=True).expand_as(targets)
    base_mean = psnr(mean_img, targets)
    g = torch.Generator().manual_seed(seed)
    others = torch.randint(0, len(pool) - 1, (n,), generator=g)
    others = others + (others >= target_pool_index).long()  # never the target itself
    base_rand = psnr(pool[others], targets)
    above = int((p > 20).sum())
    return ReconstructionScore(
        psnr=bootstrap_mean(p.numpy(), seed),
        ssim=bootstrap_mean(s.numpy(), seed),
        iip=clopper_pearson(int(ident.sum()), n),
        iip_chance=1.0 / len(pool),
        share_above_20db=clopper_pearson(above, n),
        mean_record_psnr=bootstrap_mean(base_mean.numpy(), seed),
        random_record_psnr=bootstrap_mean(base_rand.numpy(), seed),
        psnr_over_mean_baseline=bootstrap_mean((p - base_mean).numpy(), seed),
        per_target_psnr=[round(float(v), 3) for v in p],
    )


def roc_metrics(scores_in: np.ndarray, scores_out: np.ndarray, fprs=(0.001, 0.01)) -> dict:
    """Membership: AUC and TPR at the given FPRs (higher score = member). The threshold for FPR f is the
    (1 - f) quantile of the non-member scores, so TPR@f is only resolved when f >= 1 / #non-members."""
    s_in, s_out = np.asarray(scores_in, np.float64), np.asarray(scores_out, np.float64)
    ranks = rankdata(np.r_[s_in, s_out])  # average ranks for ties (Mann-Whitney AUC)
    auc = (ranks[: len(s_in)].sum() - len(s_in) * (len(s_in) + 1) / 2) / (len(s_in) * len(s_out))
    out: dict[str, float | int | dict] = {"auc": float(auc), "members": len(s_in), "non_members": len(s_out)}
    for f in fprs:
        thr = np.quantile(s_out, 1 - f, method="higher")
        tp = int((s_in > thr).sum())
        tpr = clopper_pearson(tp, len(s_in)).to_dict()
        tpr["resolved"] = bool(f * len(s_out) >= 1)
        out[f"tpr_at_{f:g}_fpr"] = tpr
    return out


def auc_interval(scores_in: np.ndarray, scores_out: np.ndarray, seed: int = 0, resamples: int = 500) -> Estimate:
    """AUC with a bootstrap 95% interval (members and non-members resampled separately)."""
    rng = np.random.default_rng(seed)
    s_in, s_out = np.asarray(scores_in), np.asarray(scores_out)
    base = roc_metrics(s_in, s_out, fprs=())["auc"]
    boots = [
        roc_metrics(rng.choice(s_in, len(s_in)), rng.choice(s_out, len(s_out)), fprs=())["auc"]
        for _ in range(resamples)
    ]
    return Estimate(base, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)), len(s_in) + len(s_out))


# ---------------------------------------------------------------------------------------------------
# tests of an attack against its chance level, and their power
# ---------------------------------------------------------------------------------------------------
def binomial_p_value(successes: int, trials: int, chance: float) -> float:
    """One-sided exact binomial test: P(Binomial(trials, chance) >= successes)."""
    from scipy.stats import binomtest

    if trials == 0:
        return 1.0
    return float(binomtest(successes, trials, min(max(chance, 0.0), 1.0), alternative="greater").pvalue)


def critical_successes(trials: int, chance: float, alpha: float) -> int:
    """Smallest k with P(Binomial(trials, chance) >= k) <= alpha (trials + 1 when no k can reach alpha)."""
    from scipy.stats import binom

    for k in range(trials + 1):
        if binom.sf(k - 1, trials, chance) <= alpha:
            return k
    return trials + 1


def minimum_detectable_rate(trials: int, chance: float, alpha: float, power: float = 0.8) -> float:
    """The smallest true success rate the one-sided binomial test at level alpha detects with probability
    `power`: with k = critical_successes, P(Binomial(trials, p) >= k) = I_p(k, trials - k + 1) = power, solved by
    the beta quantile. inf when the test cannot reject at all (too few trials for this alpha)."""
    k = critical_successes(trials, chance, alpha)
    if k > trials:
        return float("inf")
    if k == 0:
        return 0.0
    return float(beta.ppf(power, k, trials - k + 1))
