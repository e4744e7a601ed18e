"""The attack battery and its verdict: the strongest attack decides.

Attacks (classification blocks; `label`, `identify`):
  one record per update    label-head-bias, label-class-embedding, label-matched-filter (the top candidate's
                           label), identify-top1, identify-top5 (matched filter over the pool)
  n records per update     label-counts-head-bias, label-counts-pool-search (labels of the greedy picks),
                           identify-pool-search (records among the n greedy picks)
Each attack is a test of H0 "the update tells this attack nothing" against its chance level c:
  records / single labels   one-sided exact binomial test of hits out of trials (c = 1/N, 5/N, max prior,
                            n/N per greedy pick among n records of a sum; the hypergeometric overlap is less
                            spread than the binomial, so the test is conservative)
  label counts              the null distribution of the total overlap simulated with the best blind guess
                            (`label.null_overlaps`); p = (1 + #null >= observed) / (1 + draws)
Verdict (alpha family-wise, Bonferroni over the attacks):
  fail          any attack beats its chance level: p < alpha / attacks
  inconclusive  no attack does, and for labels or for records no attack is both usable and powered. Usable:
                its positive control (the same attack on raw, noiseless updates of the same size) beat chance at
                alpha; an attack whose control fails is reported and not counted (finding nothing means nothing).
                Powered: its minimum detectable rate (80% power at alpha / attacks) is at most the leak it looks
                for, halfway between chance and certainty, c + (1 - c) / 2
  pass          otherwise: no attack beat chance, and every usable label attack and identification attack had
                the power to see that leak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np
import torch
from torch import nn

from dblocks.shared.models import as_block

from .identify import CandidatePool, identify_single, identify_sums
from .label import (
    class_profiles,
    label_chance,
    label_counts,
    label_from_class_embedding,
    label_from_head_bias,
    multiset_overlap,
    null_overlaps,
)
from .metrics import binomial_p_value, clopper_pearson, minimum_detectable_rate
from .updates import Delta


class Verdict(StrEnum):
    """What an audit concludes; `dbaudit` exits 0 / 1 / 3."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class BatteryConfig:
    """alpha: family-wise level of the fail decision; power: of the minimum detectable rate; shortlist: candidates
    re-scored at an estimated draw; null_draws: simulations of the label-count null; seed: of those."""

    alpha: float = 0.05
    power: float = 0.8
    shortlist: int = 256  # one raw update in 12 had its record outside the best 32 at the middle sigma
    null_draws: int = 20000
    seed: int = 0


@dataclass
class Observed:
    """One attacked update and the truth behind it: the records' places in the pool and their labels."""

    delta: Delta
    pool_index: torch.Tensor  # [n]
    labels: torch.Tensor  # [n]


@dataclass
class AttackTest:
    """One attack's score against its chance level. trials: targets (records or labels) scored; rate with its
    95% Clopper-Pearson interval; target_rate: the leak it looks for; mde: minimum detectable rate."""

    attack: str
    hits: int
    trials: int
    chance: float
    p_value: float
    rate: dict
    target_rate: float
    mde: float
    control: dict = field(default_factory=dict)  # {rate, p_value, passed, trials}

    def to_dict(self) -> dict:
        return asdict(self)

    def beats_chance(self, alpha: float) -> bool:
        return self.p_value < alpha

    @property
    def powered(self) -> bool:
        return self.mde <= self.target_rate

    @property
    def control_passed(self) -> bool:
        return bool(self.control.get("passed", False))


# ---------------------------------------------------------------------------------------------------
def _prior(pool: CandidatePool, classes: int) -> np.ndarray:
    counts = np.bincount(pool.y.numpy(), minlength=classes).astype(float)
    return counts / counts.sum()


@dataclass
class Outcomes:
    """Per-update hits of every attack: hits[attack] [updates]; each update scores `per_update` targets."""

    hits: dict[str, list[int]]
    chance: dict[str, float]
    per_update: int
    records: int
    prior: np.ndarray

    def subset(self, index: list[int]) -> Outcomes:
        return Outcomes(
            {a: [h[i] for i in index] for a, h in self.hits.items()},
            self.chance,
            self.per_update,
            self.records,
            self.prior,
        )


def attack_outcomes(
    block: nn.Module, block_index: int, obs: list[Observed], pool: CandidatePool, cfg: BatteryConfig
) -> Outcomes:
    """Every attack on every update (one batched pass over the pool per greedy pick) for updates of
    n = len(obs[0].labels) records each."""
    classes = as_block(block).arch.num_classes
    prior = _prior(pool, classes)
    n_pool = len(pool.x)
    n = len(obs[0].labels)
    deltas = [o.delta for o in obs]
    if n == 1:
        ids = identify_single(block, block_index, deltas, pool, cfg.shortlist)
        truth = [int(o.pool_index[0]) for o in obs]
        labels = [int(o.labels[0]) for o in obs]
        c_label = float(prior.max())
        hits = {
            "label-head-bias": [int(label_from_head_bias(d) == y) for d, y in zip(deltas, labels)],
            "label-class-embedding": [int(label_from_class_embedding(block, d) == y) for d, y in zip(deltas, labels)],
            "label-matched-filter": [int(int(pool.y[i.ranking[0]]) == y) for i, y in zip(ids, labels)],
            "identify-top1": [int(int(i.ranking[0]) == t) for i, t in zip(ids, truth)],
            "identify-top5": [int(t in i.ranking[:5].tolist()) for i, t in zip(ids, truth)],
        }
        chance = {a: c_label for a in hits if a.startswith("label")}
        chance |= {"identify-top1": 1 / n_pool, "identify-top5": min(5, n_pool) / n_pool}
        return Outcomes(hits, chance, 1, 1, prior)
    ids = identify_sums(block, block_index, deltas, pool, n)
    g = torch.Generator().manual_seed(cfg.seed)
    profiles = class_profiles(block, block_index, pool.x, pool.y, g)
    hits = {
        "label-counts-head-bias": [
            multiset_overlap(label_counts(d, profiles, n), o.labels.numpy(), classes) for d, o in zip(deltas, obs)
        ],
        "label-counts-pool-search": [
            multiset_overlap(np.bincount(pool.y[i.ranking].numpy(), minlength=classes), o.labels.numpy(), classes)
            for i, o in zip(ids, obs)
        ],
        "identify-pool-search": [len(set(i.ranking.tolist()) & set(o.pool_index.tolist())) for i, o in zip(ids, obs)],
    }
    c_counts = label_chance(prior, n)
    chance = {"label-counts-head-bias": c_counts, "label-counts-pool-search": c_counts}
    chance["identify-pool-search"] = min(n, n_pool) / n_pool
    return Outcomes(hits, chance, n, n, prior)


def _p_value(attack: str, hits: int, trials: int, out: Outcomes, cfg: BatteryConfig) -> float:
    if attack.startswith("label-counts"):
        null = null_overlaps(out.prior, out.records, trials // out.records, cfg.null_draws, cfg.seed)
        return float((1 + (null >= hits).sum()) / (1 + len(null)))
    return binomial_p_value(hits, trials, out.chance[attack])


def tests_from_outcomes(main: Outcomes, control: Outcomes | None, cfg: BatteryConfig) -> list[AttackTest]:
    """Score every attack's outcomes as a test against its chance level (see the module docstring)."""
    alpha_each = cfg.alpha / len(main.hits)
    tests = []
    for name, per in main.hits.items():
        hits, trials, chance = sum(per), len(per) * main.per_update, main.chance[name]
        ctrl = {}
        if control is not None and name in control.hits:
            ch, ct = sum(control.hits[name]), len(control.hits[name]) * control.per_update
            cp = _p_value(name, ch, ct, control, cfg)
            ctrl = {"rate": ch / ct, "hits": ch, "trials": ct, "p_value": cp, "passed": cp < cfg.alpha}
        tests.append(
            AttackTest(
                attack=name,
                hits=int(hits),
                trials=trials,
                chance=chance,
                p_value=_p_value(name, hits, trials, main, cfg),
                rate=clopper_pearson(int(hits), trials).to_dict(),
                target_rate=chance + (1 - chance) / 2,
                mde=minimum_detectable_rate(trials, chance, alpha_each, cfg.power),
                control=ctrl,
            )
        )
    return tests


def run_battery(
    block: nn.Module,
    block_index: int,
    observed: list[Observed],
    pool: CandidatePool,
    controls: list[Observed] | None,
    cfg: BatteryConfig = BatteryConfig(),
) -> list[AttackTest]:
    """Every attack of the battery on `observed` (and, as its positive control, on `controls`: raw noiseless
    updates of as many records, attacked in the same passes over the pool), scored as tests against chance."""
    both = attack_outcomes(block, block_index, observed + (controls or []), pool, cfg)
    m = len(observed)
    ctrl = both.subset(list(range(m, m + len(controls)))) if controls else None
    return tests_from_outcomes(both.subset(list(range(m))), ctrl, cfg)


def strongest_attack_verdict(tests: list[AttackTest], alpha: float = 0.05) -> tuple[Verdict, list[str]]:
    """The verdict rule of the module docstring; reasons name every attack that decided it."""
    alpha_each = alpha / max(len(tests), 1)

    def line(t: AttackTest) -> str:
        return (
            f"{t.attack}: {t.hits}/{t.trials} = {t.rate['value']:.3f} (95% CI {t.rate['low']:.3f}-{t.rate['high']:.3f})"
            f" vs chance {t.chance:.4f}, p = {t.p_value:.2g}; minimum detectable rate {t.mde:.3f}"
            f" (looks for {t.target_rate:.3f})"
        )

    beaten = [t for t in tests if t.beats_chance(alpha_each)]
    if beaten:
        return Verdict.FAIL, [f"BEATS CHANCE (p < {alpha_each:.3g}) {line(t)}" for t in beaten]
    dropped = [
        f"not counted: {t.attack}'s positive control "
        + (
            f"did not beat chance on raw updates ({t.control['hits']}/{t.control['trials']}, "
            f"p = {t.control['p_value']:.2g})"
            if t.control
            else "was not run"
        )
        for t in tests
        if not t.control_passed
    ]
    reasons = []
    for kind in ("label", "identify"):
        usable = [t for t in tests if t.attack.startswith(kind) and t.control_passed]
        if not usable:
            reasons.append(f"no {kind} attack has a positive control that beat chance on raw updates")
        reasons += [f"NO POWER {line(t)}" for t in usable if not t.powered]
    if reasons:
        return Verdict.INCONCLUSIVE, reasons + dropped
    return Verdict.PASS, [line(t) for t in tests if t.control_passed] + dropped
