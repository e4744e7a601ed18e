"""Closed-form inversion of a single-record DiffusionBlocks block gradient.

For one record, the block gradient of every Linear layer whose input is a single vector a is rank one:
dL/dW = g a^T, dL/db = g, so a = (dL/dW)^T dL/db / ||dL/db||^2 (for a noisy update: the top right singular
vector of [dL/dW | dL/db], normalised by its last entry). Our blocks have three such layers that read the record:

  * noise embedding: fc1 reads [cos(c f), sin(c f)] with c = ln(sigma)/4 and fixed frequencies f
    -> sigma (fitted in ln sigma over [sigma_min, sigma_max]);
  * classifier label token: label_in reads c_in(sigma) z -> the noisy label z;
    classifier head bias: dL/db = w(sigma) (softmax - onehot(y)), the only negative entry is y (iDLG);
  * patch tokenizer: token t = W patch_t + b + pos_t, and pos is an embedding, so dL/dpos_t = g_t exactly
    and dL/dW = sum_t g_t patch_t^T = G^T P: the patches follow by least squares when T <= width
    (classifier: the clean input image; generator: c_in z, the noisy image).
  * generator label embedding: only row y (or the null row) has a gradient -> the conditioning label.
  * generator clean target: with (z, sigma, label) known, the attacker re-runs the block at the received
    weights, reads the head inputs M [T, width] and solves dL/dW_head = R^T M for the per-token residuals
    R_t = s c_out lambda(sigma) (2/n) patch_t(D - x); x = D - R / (s c_out lambda 2/n). The gradient scale s
    is 1/lr for a raw update; a clipped update hides it, and s is then set so that ||z - x||^2 = n sigma^2
    (the noise eps has unit variance) -- an estimate, not exact.

A freshly initialised block (zero AdaLN gates) passes no gradient from the input tokens to the loss, so its
first update does not depend on the image at all: then `image` is None and nothing about it can leak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from dblocks.shared.models import Block, DenoisingClassifier, DenoisingGenerator, FeatureTokenizer, unpatchify
from dblocks.shared.schedule import NoiseSchedule

from .updates import Delta


@dataclass
class ClosedFormResult:
    """What one single-record gradient gives away. image: the record's image [1, C, H, W] (classifier input or
    generator clean target; None if the gradient does not depend on it). label: class index (generator: the
    conditioning label, num_classes = null). sigma: the noise level. z: the noisy target the block saw.
    rank1_ratio: second / first singular value of the noise-embedding gradient (0 for one record)."""

    image: torch.Tensor | None
    label: int
    sigma: float
    z: torch.Tensor
    rank1_ratio: float
    scale_known: bool


def rank1_input(weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Input a of a Linear layer from its gradient [g a^T | g] (float64): (a, s2/s1 of the SVD)."""
    m = torch.cat([weight_grad.double(), bias_grad.double().unsqueeze(1)], dim=1)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    v = vh[0]
    return v[:-1] / v[-1], float(s[1] / s[0]) if len(s) > 1 and s[0] > 0 else 0.0


def _fit_log_sigma(residual, schedule: NoiseSchedule) -> float:
    """argmin over ln sigma in [ln sigma_min, ln sigma_max] of residual(ln sigma): grid, then bounded Brent."""
    grid = np.linspace(math.log(schedule.sigma_min), math.log(schedule.sigma_max), 4001)
    values = np.array([residual(t) for t in grid])
    i = int(values.argmin())
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    return float(minimize_scalar(residual, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x)


def recover_sigma(block: Block, grads: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(sigma, rank-1 ratio) from the noise embedding's first layer; (nan, nan) if it has no gradient (a fresh
    block: zero AdaLN weights keep the noise embedding out of the loss)."""
    if float(grads["noise_emb.fc1.bias"].abs().max()) == 0:
        return float("nan"), float("nan")
    a, ratio = rank1_input(grads["noise_emb.fc1.weight"], grads["noise_emb.fc1.bias"])
    freqs = block.noise_emb.freqs.double()

    def residual(log_sigma: float) -> float:
        ang = (log_sigma / 4) * freqs
        return float((torch.cat([ang.cos(), ang.sin()]) - a).pow(2).sum())

    return math.exp(_fit_log_sigma(residual, block.schedule)), ratio


def recover_tokens_input(tokenizer: nn.Module, grads: dict[str, torch.Tensor], prefix: str) -> torch.Tensor | None:
    """The tokenizer's input: patches [T, C p p] (patch tokenizer) or features [F] (feature tokenizer)."""
    if isinstance(tokenizer, FeatureTokenizer):
        gw, gb = grads[f"{prefix}.weight.weight"].double(), grads[f"{prefix}.bias.weight"].double()
        denom = gb.pow(2).sum(1)
        return None if float(denom.max()) == 0 else (gw * gb).sum(1) / denom.clamp_min(1e-300)
    g_pos = grads[f"{prefix}.pos.weight"].double()  # [T, width] = per-token gradients
    if float(g_pos.abs().max()) == 0:
        return None
    w_proj = grads[f"{prefix}.proj.weight"].double()  # [width, C p p]
    return torch.linalg.lstsq(g_pos.T, w_proj).solution  # [T, C p p]


def _as_grads(delta: Delta, lr: float | None) -> dict[str, torch.Tensor]:
    """Gradient (times an unknown positive scale when lr is None) of a descent update: -delta / lr."""
    scale = 1.0 / lr if lr else 1.0
    return {k: -v.double() * scale for k, v in delta.items()}


def closed_form_attack(block: nn.Module, delta: Delta, lr: float | None = None) -> ClosedFormResult:
    """Invert the update `delta` of one SGD step on one record, made at the weights `block` holds.

    lr: the client's learning rate when the update is raw (delta = -lr grad); None when it is clipped or
    otherwise rescaled (only ratios are then used; the generator's clean target becomes an estimate)."""
    if not isinstance(block, DenoisingClassifier | DenoisingGenerator):
        raise TypeError(f"closed form needs a DiffusionBlocks block, got {type(block).__name__}")
    grads = _as_grads(delta, lr)
    sigma, ratio = recover_sigma(block, grads)
    if math.isnan(sigma):  # without sigma nothing else can be un-preconditioned
        arch = block.arch
        label = (
            int(grads["head.bias"].argmin())
            if isinstance(block, DenoisingClassifier)
            else int(grads["label_emb.weight"].norm(dim=1).argmax())
        )
        return ClosedFormResult(None, label, sigma, torch.full((1, arch.width), float("nan")), ratio, lr is not None)
    sig = torch.tensor([sigma], dtype=torch.float64)
    c_skip, c_out, c_in, _ = (float(t) for t in block.schedule.precondition(sig))
    if isinstance(block, DenoisingClassifier):
        return _classifier(block, grads, sigma, c_in, ratio, lr is not None)
    return _generator(block, grads, sigma, c_in, c_out, ratio, lr is not None)


def _classifier(block: DenoisingClassifier, grads, sigma, c_in, ratio, scale_known) -> ClosedFormResult:
    label = int(grads["head.bias"].argmin())
    z_scaled, _ = rank1_input(grads["label_in.weight"], grads["label_in.bias"])
    z = (z_scaled / c_in).float().unsqueeze(0)
    tokens = recover_tokens_input(block.tokenizer, grads, "tokenizer")
    image = None
    if tokens is not None:
        arch = block.arch
        if arch.input == "image":
            image = unpatchify(tokens.float().unsqueeze(0), arch.patch_size, arch.image_channels, arch.image_size)
        else:
            image = tokens.float().unsqueeze(0)
    return ClosedFormResult(image, label, sigma, z, ratio, scale_known)


def _generator(block: DenoisingGenerator, grads, sigma, c_in, c_out, ratio, scale_known) -> ClosedFormResult:
    arch = block.arch
    label = int(grads["label_emb.weight"].norm(dim=1).argmax())
    tokens = recover_tokens_input(block.tokenizer, grads, "tokenizer")
    if tokens is None:
        z = torch.full((1, arch.image_channels, arch.image_size, arch.image_size), float("nan"))
        return ClosedFormResult(None, label, sigma, z, ratio, scale_known)
    z = unpatchify(tokens.unsqueeze(0), arch.patch_size, arch.image_channels, arch.image_size) / c_in  # float64
    head_in: list[torch.Tensor] = []
    hook = block.head.register_forward_hook(lambda m, inp, out: head_in.append(inp[0].detach()))
    try:
        with torch.no_grad():
            d = block(z.float(), torch.tensor([sigma]), torch.tensor([label])).double()
    finally:
        hook.remove()
    m = head_in[0][0].double()  # [T, width]
    r = torch.linalg.lstsq(m.T, grads["head.weight"].double().T).solution  # [T, p p C]
    n = z.numel()
    lam = float(block.schedule.loss_weight(torch.tensor(sigma, dtype=torch.float64)))
    rho = unpatchify(r.unsqueeze(0), arch.patch_size, arch.image_channels, arch.image_size) / (c_out * lam * 2 / n)
    if scale_known:
        x = d - rho
    else:  # choose t = 1/s > 0 with ||z - d + t rho||^2 = n sigma^2
        a = z - d
        qa, qb, qc = float(rho.pow(2).sum()), 2 * float((a * rho).sum()), float(a.pow(2).sum()) - n * sigma**2
        disc = max(qb * qb - 4 * qa * qc, 0.0)
        t = max((-qb + math.sqrt(disc)) / (2 * qa), 0.0) if qa > 0 else 0.0
        x = d - t * rho
    return ClosedFormResult(x.float(), label, sigma, z.float(), ratio, scale_known)


def closed_form_sequence(blocks: list[nn.Module], deltas: list[Delta], lr: float | None = None) -> ClosedFormResult:
    """Several rounds on the same record (fresh sigma and eps each round; the weights move between rounds).

    The classifier's input image is the same in every round, so its patches P solve all rounds' equations
    G_r^T P = W_r at once (least squares over the stacked rounds, each normalised by ||G_r|| so that a round's
    unknown gradient scale does not weight it): with independent noise per round, R rounds cut the noise of the
    solve by about sqrt(R). Label, sigma and z are those of the first round. A generator's target sits behind a
    different z every round: its per-round estimates are averaged instead."""
    first = closed_form_attack(blocks[0], deltas[0], lr)
    if len(blocks) == 1:
        return first
    if not isinstance(blocks[0], DenoisingClassifier) or blocks[0].arch.input != "image":
        estimates = [closed_form_attack(b, d, lr).image for b, d in zip(blocks, deltas)]
        images = [i for i in estimates if i is not None]
        return replace(first, image=torch.stack(images).mean(0) if images else None)
    lhs, rhs = [], []
    for d in deltas:
        g = _as_grads(d, lr)
        g_pos, w_proj = g["tokenizer.pos.weight"].double(), g["tokenizer.proj.weight"].double()
        scale = float(g_pos.norm())
        if scale == 0:
            continue
        lhs.append(g_pos.T / scale)
        rhs.append(w_proj / scale)
    if not lhs:
        return first
    tokens = torch.linalg.lstsq(torch.cat(lhs), torch.cat(rhs)).solution
    arch = blocks[0].arch
    image = unpatchify(tokens.float().unsqueeze(0), arch.patch_size, arch.image_channels, arch.image_size)
    return replace(first, image=image)
