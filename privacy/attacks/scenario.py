"""Observation points and adversaries: what an attacker sees of a simulated federation round.

K clients each hold `records` records and train the received block locally (`LocalTraining`, no DP), then clip
their delta to C. Observation points:
  raw        client 0's unclipped delta (on the company's own machine)
  clipped    client 0's clipped delta
  aggregate  the secure-aggregation sum of the K clipped deltas
  release    (sum + N(0, (z C)^2 I)) / K, the noised release
  sequence   `rounds` releases; the block moves by each release before the next round (same records)
Adversaries: "server" (honest but curious: sees the observation as is) and "colluding" (the other K-1 clients
pool their own clipped deltas with the server's view and subtract them, leaving client 0's clipped delta, plus
the central noise scaled back to the sum).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from dblocks.shared.models import as_block

from ..mechanisms import central_noise_std, sum_noise_std
from .inversion import MatchingTarget, RoundObservation
from .local import LocalTraining, local_update, trainable
from .updates import Delta, UpdateMeta, aggregate, clip_delta

ADVERSARIES = ("server", "colluding")
INVERSION_POINTS = ("raw", "clipped", "aggregate", "release", "sequence")


@dataclass(frozen=True)
class FederationScenario:
    clients: int = 1
    records: int = 1
    training: LocalTraining = LocalTraining()
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    rounds: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["training"] = self.training.to_dict()
        return d


@dataclass
class Observation:
    target: MatchingTarget
    truth_x: torch.Tensor  # the attacked records, client-major [K' * records, ...]
    truth_y: torch.Tensor
    truth_sigma: torch.Tensor  # [rounds, steps, K' * records]
    meta: UpdateMeta
    scale_known: bool  # a raw update: delta = -lr grad with the client's lr known


def _noise(delta: Delta, keys: list[str], std: float, g: torch.Generator) -> Delta:
    return {k: (v + std * torch.randn(v.shape, generator=g)) if k in keys else v.clone() for k, v in delta.items()}


def observe(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    scenario: FederationScenario,
    point: str,
    adversary: str,
    generator: torch.Generator,
) -> Observation:
    """Simulate the round(s) on client records x [K, records, ...], y [K, records] and return what `adversary`
    sees at `point`."""
    if point not in INVERSION_POINTS:
        raise ValueError(f"observation point {point!r} carries no update to invert; choose one of {INVERSION_POINTS}")
    if adversary not in ADVERSARIES:
        raise ValueError(f"adversary must be one of {ADVERSARIES}, got {adversary!r}")
    k, n = x.shape[0], x.shape[1]
    c, z, tr = scenario.clip_norm, scenario.noise_multiplier, scenario.training
    keys = sorted(name for name, _ in block.named_parameters())
    rounds = scenario.rounds if point == "sequence" else 1
    current = copy.deepcopy(block).eval()
    observed: list[RoundObservation] = []
    sigmas = []
    single = point in ("raw", "clipped") or adversary == "colluding"
    for _ in range(rounds):
        params = trainable(current)
        raws, draws = zip(*[local_update(current, block_index, x[i], y[i], tr, generator) for i in range(k)])
        clipped = [clip_delta(r, c)[0] for r in raws]
        if point == "raw":
            seen = raws[0]
        elif point == "clipped":
            seen = clipped[0]
        else:
            total = aggregate(clipped)
            if point in ("release", "sequence"):
                total = _noise(total, keys, sum_noise_std(z, c), generator)
            if adversary == "colluding":  # the other clients remove their own contributions
                seen = {name: v - sum(cl[name] for cl in clipped[1:]) for name, v in total.items()}
            else:
                seen = {name: v / k for name, v in total.items()} if point in ("release", "sequence") else total
            if point in ("release", "sequence"):  # the block moves by the release
                with torch.no_grad():
                    for name, p in current.named_parameters():
                        p.add_(total[name] / k)
        observed.append(RoundObservation(params, {name: seen[name] for name in keys}))
        attacked = draws[:1] if single else draws
        sigmas.append(torch.stack([torch.cat([d[s].sigma for d in attacked]) for s in range(tr.steps)]))
    clients_seen = 1 if single else k
    reduction: Literal["sum", "mean"] = "mean" if (point in ("release", "sequence") and not single) else "sum"
    clip = None if point == "raw" else c
    target = MatchingTarget(observed, clients_seen, n, tr, reduction, clip)
    lo_hi = as_block(block).schedule.training_interval(block_index)
    noise_std = central_noise_std(z, c, k if reduction == "mean" else 1) if point in ("release", "sequence") else 0.0
    meta = UpdateMeta(
        block_index=block_index,
        noise_interval=lo_hi,
        observation=point,
        clip_norm=clip,
        clients_aggregated=clients_seen,
        reduction=reduction,
        noise_multiplier=z if point in ("release", "sequence") else 0.0,
        central_noise_std=noise_std,
        local=tr.to_dict(),
    )
    tx = x[:clients_seen].reshape(clients_seen * n, *x.shape[2:])
    ty = y[:clients_seen].reshape(-1)
    return Observation(target, tx, ty, torch.stack(sigmas), meta, point == "raw")
