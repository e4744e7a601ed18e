"""One-run privacy audit (Steinke, Nasr, Jagielski 2023): empirical epsilon lower bounds from canaries.

m canaries are each included with probability 1/2 (independently) in one training run. After the run the auditor
scores every canary, guesses "included" for the k+ highest scores and "excluded" for the k- lowest, and counts
v correct out of r = k+ + k- guesses. If the run is (eps, delta)-DP, Theorem 5.2 of the paper bounds

    P[V >= v] <= P[Bin(r, q) >= v] + 2 m delta max_{1<=i<=v} P[v - i <= Bin(r, q) < v] / i,  q = e^eps / (1 + e^eps),

so every eps whose bound is below 1 - confidence is rejected; the lower bound is the largest rejected eps
(bisection: the bound grows with eps). Several guess rules are tried with a Bonferroni correction, so the
reported bound keeps its confidence (97.5% at record level, where the noise check takes the other 2.5%).

Two canary kinds, both white-box gradient canaries (Dirac canaries, the tightest known for DP-SGD: each
canary's clipped gradient is C along its own coordinate, which no real record touches, so the score of an
excluded canary is pure DP noise and the included ones are shifted by C per sampling):

* record level (`record_canary_audit`): the block gets an extra canary table (an embedding with one scalar per
  canary, plus W witness rows no example touches) and the data set gets m canary slots, labelled -1-i, beside
  the real records; an included canary's loss is S * table[i] (S = 10 C, so clipping must act on it), an
  excluded one's is 0 (no gradient: the same as no record under Poisson sampling, while every random draw stays
  the same in both worlds). They ride through the client's real `train_block_dp`: Opacus' Poisson sampler,
  per-example clipping (ghost clipping included) and noise. Each step's privatized gradient of the table (what
  the optimizer receives; white-box) is recorded in units of C. Score: the likelihood ratio of the subsampled
  Gaussian over the steps (`subsampled_gaussian_llr`) at the noise s measured on the witness rows. Beside the
  bound, `measure_noise`: the witness rows carry the DP noise alone, so a chi-square upper limit on its std
  below the claimed noise multiplier fails the audit (a halved noise is caught there; the bound alone reaches
  1.8 against a claim of 2.0, see docs/privacy-audit.md). Missing clipping or noise lifts the bound itself.
  `replay_sampled` / `seed_aware_bound`: the audit of someone who can replay the run's generator (knows every
  Poisson sample), a regression test that the company's sampling randomness stays secret.
* client level (`client_canary_audit`): m canary clients each send S e_j for their own random coordinate j of
  the block's parameters; the release mechanism (clip + sum + central noise + mean) is run as given, per round;
  score: the released value at j, summed over rounds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import binom
from torch import nn

from dblocks.privacy.dpsgd import DPConfig, DPReport
from dblocks.shared.training import TrainConfig, block_loss, draw_block_inputs

from .updates import Delta

CANARY_GRAD_FACTOR = 10.0  # canary gradient norm S = 10 C: clipping has to act on it


# ---------------------------------------------------------------------------------------------------
# the bound
# ---------------------------------------------------------------------------------------------------
def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Bound on P[>= v correct of r guesses] for an (epsilon, delta)-DP run with m canaries (Thm 5.2)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))
    below = binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[Bin = v-1], P[Bin = v-2], ..., P[Bin = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float = 0.05) -> float:
    """Largest epsilon rejected at `significance` given v correct of r guesses (0 if none is rejected)."""
    if v == 0 or p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < significance:
        lo, hi = hi, hi * 2
        if hi > 100:
            return lo
    for _ in range(60):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < significance:
            lo = mid
        else:
            hi = mid
    return lo


def max_lower_bound(m: int, delta: float, confidence: float = 0.975) -> float:
    """The largest epsilon lower bound m canaries can give: every guess right, at `confidence` with the
    Bonferroni factor of `bound_from_scores` (0.975: the record-level audit's share of its 95%)."""
    return epsilon_lower_bound(m, m, m, delta, (1 - confidence) / guess_strategies())


@dataclass
class CanaryBound:
    """Result of guessing from canary scores: epsilon lower bound at `delta` with `confidence`, the guess count r
    and correct guesses v that gave it, and every guess count tried."""

    epsilon_lower_bound: float
    delta: float
    confidence: float
    canaries: int
    included: int
    guesses: int
    correct: int
    tried: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def guess_fractions() -> tuple[float, ...]:
    return (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def guess_strategies() -> int:
    """How many guessing rules `bound_from_scores` tries (the Bonferroni factor)."""
    return len(guess_fractions()) + 1


def two_means_threshold(scores: np.ndarray, iterations: int = 50) -> float:
    """Threshold between the two clusters of 1-d scores (Lloyd's algorithm from the min/max), from the scores
    alone: a guess rule may depend on the output, never on which canaries were included."""
    lo, hi = float(scores.min()), float(scores.max())
    t = (lo + hi) / 2
    for _ in range(iterations):
        a, b = scores[scores <= t], scores[scores > t]
        if len(a) == 0 or len(b) == 0:
            break
        new = (a.mean() + b.mean()) / 2
        if new == t:
            break
        t = float(new)
    return t


def bound_from_scores(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    fractions: tuple[float, ...] | None = None,
) -> CanaryBound:
    """Try several guess rules, each at significance (1 - confidence) / #rules (Bonferroni), and report the best
    bound: for r = fraction * m, guess the top r/2 scores included and the bottom r/2 excluded; and one rule
    that guesses all m by the two-means threshold of the scores (right when included and excluded counts are
    unbalanced, where equal halves must err)."""
    scores, included = np.asarray(scores, np.float64), np.asarray(included, bool)
    m = len(scores)
    fractions = fractions or guess_fractions()
    significance = (1 - confidence) / (len(fractions) + 1)
    order = np.argsort(-scores, kind="stable")
    best = CanaryBound(0.0, delta, confidence, m, int(included.sum()), 0, 0)

    def consider(rule: str, guesses: int, correct: int) -> None:
        eps = epsilon_lower_bound(m, guesses, correct, delta, significance)
        best.tried.append({"rule": rule, "guesses": guesses, "correct": correct, "epsilon_lower_bound": eps})
        if eps > best.epsilon_lower_bound:
            best.epsilon_lower_bound, best.guesses, best.correct = eps, guesses, correct

    for f in fractions:
        k = min(max(1, int(round(f * m / 2))), m // 2)
        top, bottom = order[:k], order[m - k :]
        consider(f"top/bottom {k}", 2 * k, int(included[top].sum() + (~included[bottom]).sum()))
    guess_in = scores > two_means_threshold(scores)
    consider("two-means threshold", m, int((guess_in == included).sum()))
    return best


# ---------------------------------------------------------------------------------------------------
# record level: Dirac canaries through train_block_dp
# ---------------------------------------------------------------------------------------------------
class CanaryAugmentedBlock(nn.Module):
    """The block plus a canary table of `rows` scalars (canary i owns row i; the others are touched by no
    example). forward(*block_args, canary_ids) -> (block output, table[canary_ids])."""

    def __init__(self, block: nn.Module, rows: int) -> None:
        super().__init__()
        self.block = block
        self.canaries = nn.Embedding(rows, 1)
        nn.init.zeros_(self.canaries.weight)

    def forward(self, *args, canary_ids: torch.Tensor):
        return self.block(*args), self.canaries(canary_ids).squeeze(-1)


def canary_loss_fn(block: nn.Module, block_index: int, cfg: TrainConfig, included: torch.Tensor, grad_norm: float):
    """Per-example loss for `train_block_dp`. Real examples (label >= 0) get the block loss; canary slot i
    (label -1-i) gets grad_norm * table[i] when canary i is included (gradient grad_norm on its own table row,
    nothing else) and the constant 0 when it is not (no gradient at all: under Poisson sampling a record whose
    clipped gradient is 0 is the same as no record, so the slot is "absent" while every random draw of the run
    stays the same in both worlds)."""
    null_row = len(included)

    def loss(module: nn.Module, xb: torch.Tensor, yb: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        is_canary = yb < 0
        slot = torch.where(is_canary, -yb - 1, torch.zeros_like(yb))
        live = is_canary & included[slot]
        ids = torch.where(live, slot, torch.full_like(yb, null_row))
        inputs = draw_block_inputs(
            block, block_index, xb, yb.clamp_min(0), generator=generator, label_dropout=cfg.label_dropout
        )
        table: dict[str, torch.Tensor] = {}

        def forward(*args):
            out, table["value"] = module(*args, canary_ids=ids)
            return out

        real = block_loss(block, inputs, weighting=cfg.classifier_weighting, forward=forward)
        canary = torch.where(live, grad_norm * table["value"], 0.0 * table["value"])
        return torch.where(is_canary, canary, real)

    return loss


@contextmanager
def privatized_gradients(weight: torch.Tensor):
    """The list, one entry per optimizer step taken inside the block, of `weight`'s gradient as the underlying
    optimizer receives it: after Opacus' clipping, noise and scaling. These privatized gradients are exactly
    what DP-SGD's accountant covers (everything after them, AdamW included, is post-processing), so scoring
    canaries by them is the white-box audit of the mechanism itself. (Scoring by the final weights instead
    would let Adam's per-coordinate normalisation hide an unclipped gradient.)"""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    steps: list[torch.Tensor] = []

    def hook(optimizer, args, kwargs):
        if hasattr(optimizer, "original_optimizer"):  # a DP wrapper: its inner optimizer sees the noised gradient
            return
        if weight.grad is not None and any(p is weight for group in optimizer.param_groups for p in group["params"]):
            steps.append(weight.grad.detach().double().flatten().clone())

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield steps
    finally:
        handle.remove()


def subsampled_gaussian_llr(x: np.ndarray, sample_rate: float, noise: float) -> np.ndarray:
    """Log-likelihood ratio, summed over steps (axis 0), of "a record with clipped gradient 1 along this
    coordinate is in the data" against "it is not", for per-step values x in units of C:
    included: x_t ~ (1 - q) N(0, s^2) + q N(1, s^2), excluded: x_t ~ N(0, s^2), so per step
    log((1 - q) + q exp((2 x_t - 1) / (2 s^2))). Neyman-Pearson: the most powerful score for one canary."""
    a = (2 * x - 1) / (2 * noise**2)
    return np.logaddexp(math.log1p(-sample_rate), math.log(sample_rate) + a).sum(axis=0)


@dataclass
class NoiseMeasurement:
    """The DP noise measured on `coordinates` witness coordinates (canary-table rows no example touches, so
    their privatized gradient is the Gaussian noise alone) over `steps` steps, in units of the clip C.

    With n = coordinates * steps values x, s^2 = mean(x^2) and n s^2 / sigma^2 ~ chi2(n): the one-sided
    upper confidence limit is sigma_hi = s sqrt(n / chi2.ppf(alpha, n)). The run adds less noise than
    claimed, with confidence 1 - alpha, when sigma_hi < claimed_noise_multiplier; `epsilon_at_upper_limit` is
    then what the accountant gives at sigma_hi (same sample rate and steps): the run's epsilon is above it if
    sampling and clipping are as claimed."""

    noise_multiplier: float  # measured, s
    upper_limit: float  # sigma_hi
    claimed_noise_multiplier: float
    coordinates: int
    steps: int
    alpha: float
    below_claim: bool
    epsilon_at_upper_limit: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def measure_noise(
    witness: np.ndarray, claimed: float, sample_rate: float, delta: float, alpha: float, accountant: str
) -> NoiseMeasurement:
    """`witness`: (steps, coordinates) privatized gradients of untouched coordinates in units of C."""
    from scipy.stats import chi2

    from dblocks.privacy.accounting import MechanismStep
    from dblocks.privacy.accounting import epsilon as accountant_epsilon

    steps, coords = witness.shape
    n = witness.size
    s = float(np.sqrt(np.mean(witness**2)))
    hi = s * math.sqrt(n / float(chi2.ppf(alpha, n)))
    below = hi < claimed
    eps = None
    if below and hi > 0:
        eps = accountant_epsilon([MechanismStep(max(hi, 1e-3), sample_rate, steps)], delta, accountant)
    return NoiseMeasurement(s, hi, claimed, coords, steps, alpha, bool(below), eps)


@dataclass
class RecordCanaryResult:
    """The one-run bound (`bound`, from the canaries' likelihood-ratio scores), the noise measured on the
    witness coordinates (`noise`), the run's own accountant epsilon and DP report."""

    bound: CanaryBound
    noise: NoiseMeasurement
    accountant_epsilon: float
    dp_report: dict
    scores: list[float]
    included: list[bool]
    seconds: float = 0.0
    run: CanaryRun | None = None  # the per-step values (not written to the record)

    def to_dict(self) -> dict:
        return {
            "bound": self.bound.to_dict(),
            "noise": self.noise.to_dict(),
            "accountant_epsilon": self.accountant_epsilon,
            "dp_report": self.dp_report,
            "seconds": self.seconds,
        }

    def noise_check(self) -> tuple[bool, str]:
        """(failed?, reason): the noise measured on the witness coordinates is below the claimed noise
        multiplier at confidence 1 - alpha (half the audit's significance; the one-run bound has the other)."""
        n = self.noise
        said = (
            f"DP noise measured on {n.coordinates} untouched coordinates x {n.steps} steps: "
            f"{n.noise_multiplier:.4f} C (upper {1 - n.alpha:.1%} limit {n.upper_limit:.4f} C) "
        )
        if not n.below_claim:
            return False, said + f"conforms to the claimed noise multiplier {n.claimed_noise_multiplier:g}"
        implied = "" if n.epsilon_at_upper_limit is None else f": epsilon at that limit {n.epsilon_at_upper_limit:.2f}"
        return True, said + f"is BELOW the claimed noise multiplier {n.claimed_noise_multiplier:g}{implied}"


AUDIT_SIGNIFICANCE = 0.05  # the record-level audit's total: half for the one-run bound, half for the noise test
WITNESS_COORDINATES = 1000


def record_canary_audit(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    dp: DPConfig,
    canaries: int = 1000,
    seed: int = 0,
    confidence: float = 1 - AUDIT_SIGNIFICANCE,
    generator: torch.Generator | None = None,
    witnesses: int = WITNESS_COORDINATES,
) -> RecordCanaryResult:
    """Run the client's DP-SGD (`train_block_dp`, on a copy of `block`) on (x, y) plus `canaries` canary slots
    (each canary included with probability 1/2, drawn from `seed`) and bound epsilon from the canary scores.

    The data set always holds all m slots (an excluded canary's slot has no gradient), so the sample rate
    q = dp.batch_size / (len(x) + m) and every random draw are the same whichever canaries are included.
    Each step's privatized gradient on the canary table is recorded, in units of C (times the expected batch
    q n over C); the witness rows give the measured noise s; each canary's score is the likelihood ratio
    `subsampled_gaussian_llr` at (q, s), a function of the output alone, as the one-run theorem requires.
    `generator`: the run's source of randomness, as `train_block_dp` takes it (None: seeded from cfg.seed,
    reproducible; a company's client passes `dpsgd.secret_generator()`). The run's own accountant epsilon
    (same sampler, steps, noise) comes back beside the bound."""
    t0 = time.perf_counter()
    alpha = (1 - confidence) / 2
    g = torch.Generator().manual_seed(seed)
    included = torch.rand(canaries, generator=g) < 0.5
    run = canary_run(block, block_index, x, y, cfg, dp, included, witnesses, seed, generator)
    noise = measure_noise(run.witness, dp.noise_multiplier, run.report.sample_rate, dp.delta, alpha, dp.accountant)
    scores = subsampled_gaussian_llr(run.per_step, run.report.sample_rate, max(noise.noise_multiplier, 0.05))
    bound = bound_from_scores(scores, included.numpy(), dp.delta, 1 - alpha)
    return RecordCanaryResult(
        bound,
        noise,
        run.report.epsilon,
        run.report.to_dict(),
        scores.tolist(),
        included.tolist(),
        time.perf_counter() - t0,
        run,
    )


@dataclass
class CanaryRun:
    """What one DP-SGD run with canary slots produced. per_step: (steps, m) privatized gradients of the canary
    rows in units of C; witness: (steps, W) the same for the rows no example touches; sampled: (steps, m) which
    canary slots each step's Poisson sample held (what an auditor who could replay the sampler would know)."""

    per_step: np.ndarray
    witness: np.ndarray
    sampled: np.ndarray
    report: DPReport


def canary_run(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    dp: DPConfig,
    included: torch.Tensor,
    witnesses: int = WITNESS_COORDINATES,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> CanaryRun:
    """`train_block_dp` on a copy of `block` with (x, y) and m = len(included) canary slots (see
    `record_canary_audit`), recording every step's privatized canary-table gradient and sampled slots."""
    from dblocks.privacy.dpsgd import train_block_dp

    m = len(included)
    x_all = torch.cat([x, torch.zeros((m, *x.shape[1:]), dtype=x.dtype)])
    y_all = torch.cat([y, -torch.arange(m) - 1])
    audited = CanaryAugmentedBlock(copy.deepcopy(block), m + 1 + witnesses)
    canary_loss = canary_loss_fn(audited.block, block_index, cfg, included, CANARY_GRAD_FACTOR * dp.max_grad_norm)
    batches: list[tuple[int, torch.Tensor]] = []  # (step, canary slots in its sample)

    with torch.random.fork_rng(), privatized_gradients(audited.canaries.weight) as steps:

        def loss(module: nn.Module, xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
            batches.append((len(steps), -yb[yb < 0] - 1))
            return canary_loss(module, xb, yb, g)

        torch.manual_seed(seed)  # nothing should draw from the global generator; if anything does, reproducibly
        report = train_block_dp(audited, block_index, x_all, y_all, cfg, dp, loss_fn=loss, generator=generator)
    units = report.sample_rate * len(x_all) / dp.max_grad_norm  # privatized gradient -> units of C
    rows = torch.stack(steps).numpy() * units
    sampled = np.zeros((len(steps), m), dtype=bool)
    for step, slots in batches:
        sampled[step, slots.numpy()] = True
    return CanaryRun(rows[:, :m], rows[:, m + 1 :], sampled, report)


# ---------------------------------------------------------------------------------------------------
# seed-aware audit: an auditor who can replay the run's sampler
# ---------------------------------------------------------------------------------------------------
def replay_sampled(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    dp: DPConfig,
    canaries: int,
    guessed_generator: torch.Generator,
    witnesses: int = WITNESS_COORDINATES,
) -> np.ndarray:
    """The auditor's replay of a canary run from a guessed generator: (steps, m) which canary slots each step's
    Poisson sample held, if the guess is the run's generator. Every draw of the run (samples, diffusion draws,
    noise) depends on the shapes alone, not on which canaries are included or on any value, so re-running the
    same training with the guessed generator and no canary included reproduces the run's samples exactly."""
    none = torch.zeros(canaries, dtype=torch.bool)
    return canary_run(block, block_index, x, y, cfg, dp, none, witnesses, generator=guessed_generator).sampled


def seed_aware_bound(
    result: RecordCanaryResult, sampled: np.ndarray, delta: float, confidence: float = 1 - AUDIT_SIGNIFICANCE
) -> CanaryBound:
    """One-run bound for an auditor who believes `sampled` are the run's Poisson samples: canary i's score is
    the likelihood ratio of the Gaussian mechanism with those samples known, (sum_{t in S_i} x_t - |S_i| / 2) / s^2
    (x in units of C, s the measured noise). With the right samples there is no amplification by subsampling
    left and the bound can exceed the accountant's epsilon; with a wrong guess the scores are noise. The bound
    is valid whatever `sampled` is (it is fixed before the run's output is seen)."""
    if result.run is None:
        raise ValueError("the result carries no per-step values (record_canary_audit keeps them in .run)")
    x, s = result.run.per_step, max(result.noise.noise_multiplier, 0.05)
    if sampled.shape != x.shape:
        raise ValueError(f"replayed samples have shape {sampled.shape}, the run recorded {x.shape}")
    scores = ((x * sampled).sum(axis=0) - sampled.sum(axis=0) / 2) / s**2
    return bound_from_scores(scores, np.asarray(result.included), delta, confidence)


# ---------------------------------------------------------------------------------------------------
# client level: canary clients through a release mechanism
# ---------------------------------------------------------------------------------------------------
ReleaseFn = Callable[[list[Delta], torch.Generator], Delta]


@dataclass
class ClientCanaryResult:
    bound: CanaryBound
    accountant_epsilon: float
    rounds: int
    scores: list[float]
    included: list[bool]

    def to_dict(self) -> dict:
        return {"bound": self.bound.to_dict(), "accountant_epsilon": self.accountant_epsilon, "rounds": self.rounds}


def client_canary_audit(
    real_updates: list[Delta],
    param_keys: list[str],
    release_fn: ReleaseFn,
    clip_norm: float,
    noise_multiplier: float,
    delta: float,
    canaries: int = 1000,
    rounds: int = 1,
    seed: int = 0,
    confidence: float = 0.95,
    accountant: str = "prv",
) -> ClientCanaryResult:
    """Canary clients for client-level DP. Each canary i sends S e_{j_i} (S = 10 C, one random parameter
    coordinate per canary) in every round it is included in; the real clients send `real_updates`. The
    accountant's epsilon is that of `rounds` Gaussian mechanisms with sensitivity C and noise z C."""
    from dblocks.privacy.accounting import MechanismStep
    from dblocks.privacy.accounting import epsilon as accountant_epsilon

    g = torch.Generator().manual_seed(seed)
    included = torch.rand(canaries, generator=g) < 0.5
    sizes = [real_updates[0][k].numel() for k in param_keys]
    total = sum(sizes)
    if canaries > total:
        raise ValueError(f"{canaries} canaries need as many parameter coordinates; the block has {total}")
    coords = torch.randperm(total, generator=g)[:canaries]
    offsets = np.cumsum([0] + sizes)
    template = {k: torch.zeros_like(v) for k, v in real_updates[0].items()}
    canary_updates = []
    for i in torch.nonzero(included).flatten().tolist():
        c = int(coords[i])
        t = int(np.searchsorted(offsets, c, side="right") - 1)
        u = {k: v.clone() for k, v in template.items()}
        u[param_keys[t]].view(-1)[c - offsets[t]] = CANARY_GRAD_FACTOR * clip_norm
        canary_updates.append(u)
    scores = torch.zeros(canaries, dtype=torch.float64)
    for _ in range(rounds):
        released = release_fn(real_updates + canary_updates, g)
        flat = torch.cat([released[k].flatten().double() for k in param_keys])
        scores += flat[coords]
    bound = bound_from_scores(scores.numpy(), included.numpy(), delta, confidence)
    eps = accountant_epsilon([MechanismStep(noise_multiplier, 1.0, rounds)], delta, accountant)
    return ClientCanaryResult(bound, eps, rounds, scores.tolist(), included.tolist())
