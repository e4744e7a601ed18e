"""Gradient-matching inversion of block updates: DLG, iDLG, Inverting Gradients, and DLG with learned client
scales for aggregates.

The attacker holds the received weights of every observed round and an observed update u_obs (one client's
delta, or the sum / mean over K clients of clipped deltas, possibly noised). It creates dummy records (images x,
labels) for each of the K clients, dummy noise draws (sigma in the block's training interval and eps) for every
local step of every round, and simulates the client's local training on them (`local.simulate_update`: the
exact update function). It then minimises a matching loss over the dummies:

  * "l2" (DLG, Zhu et al. 2019): || sum_k s_k u_k(dummies) - u_obs ||^2, with s_k = 1, or with learned
    s_k = exp(theta_k) when the clients' clipping factors are unknown (aggregates of clipped updates);
  * "cosine" (Inverting Gradients, Geiping et al. 2020): 1 - cos(sum_k clip_C(u_k), u_obs) + tv_weight TV(x):
    scale-invariant, so clipping does not hide anything from it.
Both are taken per parameter tensor and averaged (l2 relative to ||u_obs||^2 of the tensor): the tokenizer's
gradients, which carry the image, are orders of magnitude smaller than the head's and a whole-vector loss
matches the update to 1 - cos < 1e-6 without recovering the image.

Labels: "infer" reads them off the update (iDLG, Zhao et al. 2020): the classifier head-bias coordinates that
went up, or the generator label-embedding rows that moved; "learn" (DLG) optimises soft labels instead
(classifier only). Images are kept in [-1, 1] by projection after each step. Adam with cosine decay, several
restarts, best matching loss wins. Rounds share the records (sequence observation: joint matching).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dblocks.shared.models import Block, DenoisingClassifier, DenoisingGenerator
from dblocks.shared.training import BlockInputs

from .local import LocalTraining, simulate_update


@dataclass(frozen=True)
class MatchingConfig:
    loss: Literal["l2", "cosine"] = "cosine"
    labels: Literal["infer", "learn"] = "infer"
    learn_scales: bool = False
    tv_weight: float = 0.0
    iterations: int = 1000
    lr: float = 0.1
    restarts: int = 1
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


#: The named attacks of the library.
ATTACKS: dict[str, MatchingConfig] = {
    "dlg": MatchingConfig(loss="l2", labels="learn"),
    "idlg": MatchingConfig(loss="l2", labels="infer"),
    "inversion": MatchingConfig(loss="cosine", labels="infer", tv_weight=1e-3),
    "dlg-scales": MatchingConfig(loss="l2", labels="infer", learn_scales=True),
}


@dataclass
class RoundObservation:
    """One round as the attacker sees it: the weights the clients received and the observed parameter delta."""

    params: dict[str, torch.Tensor]
    update: dict[str, torch.Tensor]


@dataclass
class MatchingTarget:
    """What is attacked: rounds sharing the same clients' records.

    clients: K, the number of client updates in each observed update; records: records per client.
    reduction: "sum" or "mean" over clients. clip_norm: the client-level clip C (None: not clipped)."""

    rounds: list[RoundObservation]
    clients: int
    records: int
    training: LocalTraining
    reduction: Literal["sum", "mean"] = "sum"
    clip_norm: float | None = None


@dataclass
class InversionResult:
    images: torch.Tensor  # [K * records, ...]
    labels: torch.Tensor  # [K * records] (hard labels; argmax of the learned soft labels)
    sigmas: torch.Tensor  # [rounds, steps, K * records]
    matching_loss: float
    history: list[float] = field(default_factory=list)


def infer_labels(block: nn.Module, update: dict[str, torch.Tensor], count: int) -> torch.Tensor:
    """iDLG: the `count` labels an update was made on (classes may repeat only if count > #classes)."""
    if isinstance(block, DenoisingClassifier):
        score = update["head.bias"].float()  # descent raises the bias of the true class (its gradient is negative)
    elif isinstance(block, DenoisingGenerator):
        score = update["label_emb.weight"].float().norm(dim=1)
    else:
        raise TypeError(f"not a DiffusionBlocks block: {type(block).__name__}")
    order = torch.argsort(score, descending=True)
    return order[torch.arange(count) % len(order)]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


class _Dummies(nn.Module):
    """The attacker's unknowns for K clients x n records, R rounds, S steps."""

    labels: torch.Tensor  # buffer [K * n]: the known (inferred) labels, or zeros when they are learned

    def __init__(self, block: Block, target: MatchingTarget, labels: torch.Tensor | None, generator: torch.Generator):
        super().__init__()
        k, n, r, s = target.clients, target.records, len(target.rounds), target.training.steps
        arch = block.arch
        self.block, self.kn = block, k * n
        shape = (
            (k * n, arch.image_channels, arch.image_size, arch.image_size)
            if arch.input == "image"
            else (k * n, arch.num_features)
        )
        self.x = nn.Parameter(0.5 * torch.randn(shape, generator=generator).clamp(-2, 2))
        self.log_sigma_raw = nn.Parameter(torch.zeros(r, s, k * n))
        eps_shape = (r, s, k * n, arch.width) if isinstance(block, DenoisingClassifier) else (r, s, *shape)
        self.eps = nn.Parameter(torch.randn(eps_shape, generator=generator))
        self.label_logits = nn.Parameter(torch.zeros(k * n, arch.num_classes)) if labels is None else None
        self.register_buffer("labels", labels if labels is not None else torch.zeros(k * n, dtype=torch.long))
        self.log_scale = nn.Parameter(torch.zeros(k))

    def sigma(self, lo: float, hi: float) -> torch.Tensor:
        a, b = math.log(lo), math.log(hi)
        return torch.exp(a + (b - a) * torch.sigmoid(self.log_sigma_raw))

    def inputs(self, r: int, s: int, rows: slice, lo: float, hi: float) -> BlockInputs:
        sigma = self.sigma(lo, hi)[r, s, rows]
        x, eps = self.x[rows], self.eps[r, s, rows]
        if isinstance(self.block, DenoisingClassifier):
            if self.label_logits is not None:
                y = self.label_logits[rows].softmax(-1)
                e = y @ self.block.class_emb
            else:
                y = self.labels[rows]
                e = self.block.class_emb[y]
            return BlockInputs(x, y, sigma, e + sigma[:, None] * eps, y)
        y = self.labels[rows]
        return BlockInputs(x, y, sigma, x + sigma.view(-1, *[1] * (x.dim() - 1)) * eps, y)

    def hard_labels(self) -> torch.Tensor:
        return self.label_logits.argmax(-1) if self.label_logits is not None else self.labels


def _flat(d: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([d[k].flatten() for k in keys])


def _segments(keys: list[str], like: dict[str, torch.Tensor]) -> list[slice]:
    out, i = [], 0
    for k in keys:
        out.append(slice(i, i + like[k].numel()))
        i += like[k].numel()
    return out


def _informative_segments(block, block_index, target: MatchingTarget, keys, observed) -> list[slice]:
    """Parameter tensors worth matching: those the observed update touches and whose update is not structurally
    zero. Structural zeros (e.g. attention key biases: softmax ignores a constant per query) are found by
    simulating the update on random records; their observed values are float round-off (or pure noise)."""
    from dblocks.shared.training import draw_block_inputs

    arch = block.arch
    n = target.records
    shape = (
        (n, arch.image_channels, arch.image_size, arch.image_size) if arch.input == "image" else (n, arch.num_features)
    )
    g = torch.Generator().manual_seed(12345)
    x = torch.rand(shape, generator=g) * 2 - 1
    y = torch.randint(0, arch.num_classes, (n,), generator=g)
    steps = [draw_block_inputs(block, block_index, x, y, generator=g, label_dropout=0.0)]
    params = {k: target.rounds[0].params[k].detach() for k in keys}
    probe = _flat(simulate_update(block, params, steps, LocalTraining(lr=1.0)), keys)
    segs = _segments(keys, target.rounds[0].update)
    scale = float(probe.norm())
    return [
        seg
        for seg in segs
        if float(probe[seg].norm()) > 1e-6 * scale and any(float(o[seg].abs().max()) > 0 for o in observed)
    ]


def invert(
    block: nn.Module,
    block_index: int,
    target: MatchingTarget,
    cfg: MatchingConfig,
    progress=None,
) -> InversionResult:
    """Run the gradient-matching attack `cfg` against `target` (see module docstring)."""
    if cfg.labels == "learn" and not isinstance(block, DenoisingClassifier):
        raise ValueError("learned (soft) labels need a classifier block; use labels='infer' for a generator")
    if not isinstance(block, DenoisingClassifier | DenoisingGenerator):
        raise TypeError(f"not a DiffusionBlocks block: {type(block).__name__}")
    keys = sorted(n for n, _ in block.named_parameters())
    lo, hi = block.schedule.training_interval(block_index)
    observed = [_flat(r.update, keys).float() for r in target.rounds]
    segments = _informative_segments(block, block_index, target, keys, observed)
    kn = target.clients * target.records
    labels = infer_labels(block, target.rounds[0].update, kn) if cfg.labels == "infer" else None
    block = block.eval()
    best: InversionResult | None = None
    for restart in range(cfg.restarts):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + restart)
        dummies = _Dummies(block, target, labels, g)
        params = [p for n, p in dummies.named_parameters() if (n != "log_scale" or cfg.learn_scales)]
        if cfg.learn_scales:  # start each client's scale at ||u_obs|| / ||sum_k u_k||: clip factors are ~C / ||u||
            with torch.no_grad():
                free = _matching_loss(block, target, dummies, observed, keys, segments, cfg, lo, hi, unscaled_norm=True)
                dummies.log_scale.fill_(math.log(float(observed[0].norm()) / max(free, 1e-30)))
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.iterations, eta_min=cfg.lr * 1e-3)
        history: list[float] = []
        for it in range(cfg.iterations):
            opt.zero_grad(set_to_none=True)
            loss = _matching_loss(block, target, dummies, observed, keys, segments, cfg, lo, hi)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                dummies.x.clamp_(-1, 1)
            history.append(float(loss.detach()))
            if progress and (it % 50 == 0 or it == cfg.iterations - 1):
                progress(restart, it, history[-1])
        with torch.no_grad():
            final = float(_matching_loss(block, target, dummies, observed, keys, segments, cfg, lo, hi))
        if best is None or final < best.matching_loss:
            best = InversionResult(
                dummies.x.detach().clone(),
                dummies.hard_labels().detach().clone(),
                dummies.sigma(lo, hi).detach().clone(),
                final,
                history,
            )
    if best is None:
        raise ValueError(f"MatchingConfig.restarts must be at least 1, got {cfg.restarts}")
    return best


def _matching_loss(
    block: Block,
    target: MatchingTarget,
    dummies: _Dummies,
    observed,
    keys,
    segments,
    cfg: MatchingConfig,
    lo,
    hi,
    unscaled_norm: bool = False,
):
    """The matching loss (or, with unscaled_norm, the norm of the first round's predicted update before scaling)."""
    n = target.records
    total: torch.Tensor | float = 0.0
    with torch.enable_grad():
        for r, obs_round in enumerate(target.rounds):
            params = {k: obs_round.params[k].detach() for k in keys}
            pred: torch.Tensor | None = None
            for k in range(target.clients):
                rows = slice(k * n, (k + 1) * n)
                steps = [dummies.inputs(r, s, rows, lo, hi) for s in range(target.training.steps)]
                u = _flat(simulate_update(block, params, steps, target.training, create_graph=True), keys)
                if cfg.loss == "cosine" and target.clip_norm is not None:
                    u = u * torch.clamp(target.clip_norm / (u.norm() + 1e-12), max=1.0)
                if cfg.learn_scales and not unscaled_norm:
                    u = u * torch.exp(dummies.log_scale[k])
                pred = u if pred is None else pred + u
            if pred is None:
                raise ValueError(f"a matching target needs at least one client, got {target.clients}")
            if target.reduction == "mean":
                pred = pred / target.clients
            if unscaled_norm:
                return float(pred.detach().norm())
            obs = observed[r]
            for seg in segments:
                p, o = pred[seg], obs[seg]
                if cfg.loss == "l2":
                    total = total + (p - o).pow(2).sum() / o.pow(2).sum().clamp_min(1e-30) / len(segments)
                else:
                    total = total + (1 - F.cosine_similarity(p, o, dim=0, eps=1e-30)) / len(segments)
        if cfg.tv_weight and dummies.x.dim() == 4:
            total = total + cfg.tv_weight * total_variation(dummies.x)
    return total
