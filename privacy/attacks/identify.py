"""Candidate identification without reconstruction: a matched filter over a pool the attacker holds.

Threat model (the researcher's): the attacker knows the population (a pool of candidate records that holds the
target) but not which member trained. It never reconstructs an image. For every candidate j it computes the
update that candidate would have produced, d_j = -grad_theta L(x_j, y_j; z, sigma) (one SGD step direction at
the received weights theta), and scores it by the cosine with the observed update u over ALL trainable
coordinates:

    score_j = <u, d_j> / (||u|| ||d_j||)

Single record: (sigma, z) are the noise draw estimated from u itself (`estimate_draw`, the closed form's
noise-embedding and label-token rank-one solves); the true record's d_j is then parallel to u up to the central
noise and the clip scale (a positive factor the cosine ignores). Top-1 / top-5 against chance 1/N and 5/N.

Sums of n records (a SecAgg aggregate, a release, a clipped batch): each record had its own draw, which the sum
hides, so every candidate is scored at the block's middle sigma with the clean class embedding z = E[y_j]
(eps = 0), and n candidates are picked greedily (orthogonal matching pursuit): pick the best-scoring candidate,
refit u on the picked directions by least squares (a free positive scale per record absorbs clip factors and
sigma weights), score the rest against the residual, repeat. Chance: n guesses among N hold n^2 / N true records
on average (hypergeometric).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from dblocks.shared.models import DenoisingClassifier, as_block, twice_differentiable
from dblocks.shared.training import BlockInputs, block_loss

from .closed_form import rank1_input, recover_sigma
from .updates import Delta, flatten, parameter_keys

CHUNK = 128  # candidates per vectorised gradient batch (memory: CHUNK x parameters floats)


@dataclass(frozen=True)
class NoiseDraw:
    """The (sigma, noisy class embedding z) a single-record update was made at; estimated=False for a guess."""

    sigma: float
    z: torch.Tensor  # [width]
    estimated: bool


@dataclass(frozen=True)
class Identification:
    """ranking: pool indices best first (single record) or the greedily picked n (sums); scores aligned with it."""

    ranking: torch.Tensor
    scores: torch.Tensor
    draw: NoiseDraw | None


def _classifier(block: nn.Module) -> DenoisingClassifier:
    b = as_block(block)
    if not isinstance(b, DenoisingClassifier):
        raise TypeError("label inference and identification attack classification blocks (the digits preset)")
    return b


def estimate_draw(block: nn.Module, delta: Delta) -> NoiseDraw | None:
    """(sigma, z) of a single-record update from the noise embedding's and the label token's rank-one gradients
    (`closed_form.recover_sigma`, `rank1_input`); None when the block passes no gradient to them (fresh block)."""
    b = _classifier(block)
    grads = {k: -v.double() for k, v in delta.items()}  # a positive multiple of the gradient
    sigma, _ = recover_sigma(b, grads)
    if math.isnan(sigma):
        return None
    z_scaled, _ = rank1_input(grads["label_in.weight"], grads["label_in.bias"])
    (_, _, c_in, _) = (float(t) for t in b.schedule.precondition(torch.tensor([sigma], dtype=torch.float64)))
    return NoiseDraw(sigma, (z_scaled / c_in).float(), True)


def middle_sigma(block: nn.Module, block_index: int) -> float:
    """Geometric middle of the block's training interval (the guess for records whose draw a sum hides)."""
    lo, hi = as_block(block).schedule.training_interval(block_index)
    return math.sqrt(lo * hi)


def candidate_directions(
    block: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """[n, P] descent directions -grad L of each candidate (x_i, y_i) at (sigma_i, z_i), over the trainable
    parameters in `parameter_keys` order (the order `flatten(delta, keys)` uses)."""
    keys = parameter_keys(block)
    params = {k: p.detach() for k, p in block.named_parameters()}
    buffers = {k: v.detach() for k, v in block.named_buffers()}

    def loss(p, xi, yi, si, zi):
        def forward(*args):
            return functional_call(block, {**p, **buffers}, args)

        inputs = BlockInputs(xi[None], yi[None], si[None], zi[None], yi[None])
        return block_loss(block, inputs, forward=forward).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0, 0, 0))
    out = []
    with twice_differentiable(), torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")  # attention falls back to a loop: correct
        for s in range(0, len(x), CHUNK):
            g = per_sample(params, x[s : s + CHUNK], y[s : s + CHUNK], sigma[s : s + CHUNK], z[s : s + CHUNK])
            out.append(-torch.cat([g[k].flatten(1) for k in keys], dim=1))
    return torch.cat(out)


@dataclass
class CandidatePool:
    """The records the attacker holds (x [N, ...], y [N]); the target is one of them."""

    x: torch.Tensor
    y: torch.Tensor

    def directions(self, block: nn.Module, draws: list[tuple[torch.Tensor, torch.Tensor]], sl: slice) -> torch.Tensor:
        """[n, P] candidate directions of pool[sl], averaged over the draws [(sigma [N], z [N, width]), ...]."""
        d = torch.stack([candidate_directions(block, self.x[sl], self.y[sl], s[sl], z[sl]) for s, z in draws])
        return d.mean(0)

    def products(self, block: nn.Module, draws: list[tuple[torch.Tensor, torch.Tensor]], vectors: torch.Tensor):
        """(||d_j|| [N], <d_j, v_m> [N, M]) for every candidate's direction d_j (averaged over `draws`) and vectors
        v [M, P], chunk by chunk (the [N, P] direction matrix of a full pool would not fit in memory)."""
        norms, dots = [], []
        for s in range(0, len(self.x), CHUNK):
            d = self.directions(block, draws, slice(s, s + CHUNK))
            norms.append(d.norm(dim=1))
            dots.append(d.double() @ vectors.double().T)
        return torch.cat(norms).double(), torch.cat(dots)


def sum_draws(block: nn.Module, block_index: int, y: torch.Tensor, count: int, seed: int = 0):
    """`count` shared noise draws for scoring candidates of a sum (whose own draws the sum hides): draw r has
    sigma_r ~ the block's sigma distribution and z_j = E[y_j] + sigma_r eps_r for every candidate j; count 0
    gives the single guess (middle sigma, clean class embedding)."""
    b = _classifier(block)
    n = len(y)
    if count == 0:
        return [(torch.full((n,), middle_sigma(block, block_index)), b.class_emb[y])]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        sigma = b.schedule.sample_sigma(block_index, 1, g)
        eps = torch.randn(1, b.arch.width, generator=g)
        out.append((sigma.expand(n), b.class_emb[y] + sigma * eps))
    return out


def _vectors(block: nn.Module, deltas: list[Delta]) -> torch.Tensor:
    keys = parameter_keys(block)
    return torch.stack([flatten(d, keys).double() for d in deltas])


def plausible(draw: NoiseDraw | None, block: nn.Module, block_index: int, ratio: float) -> bool:
    """A draw estimate is used only when it is finite, inside the block's training interval and the noise
    embedding's gradient is close to rank one (second / first singular value < 0.5)."""
    if draw is None or not bool(torch.isfinite(draw.z).all()):
        return False
    lo, hi = as_block(block).schedule.training_interval(block_index)
    return lo * 0.999 <= draw.sigma <= hi * 1.001 and ratio < 0.5


def identify_single(
    block: nn.Module, block_index: int, deltas: list[Delta], pool: CandidatePool, shortlist: int = 256
) -> list[Identification]:
    """Rank every pool candidate for each single-record update (batched: one pass over the pool for all).

    Two hypotheses per candidate, the score is the larger cosine: (a) the block's middle sigma and the candidate's
    clean class embedding (every candidate, one pass); (b) the draw estimated from the update (`estimate_draw`),
    when `plausible`, for the `shortlist` best candidates of (a) and every candidate of the labels the estimated z
    and the head bias point to."""
    b = _classifier(block)
    u = _vectors(block, deltas)
    norms, dots = pool.products(block, sum_draws(block, block_index, pool.y, 0), u)
    scores = dots / (norms[:, None] * u.norm(dim=1)[None, :]).clamp_min(1e-300)  # [N, T]
    out = []
    for t, delta in enumerate(deltas):
        s = scores[:, t].clone()
        grads = {k: -v.double() for k, v in delta.items()}
        _, ratio = recover_sigma(b, grads) if float(grads["noise_emb.fc1.bias"].abs().max()) > 0 else (0.0, 1.0)
        draw = estimate_draw(block, delta)
        if plausible(draw, block, block_index, ratio):
            assert draw is not None
            # the best `shortlist` plus every candidate of the labels the draw's z and the head bias point to (the
            # middle-sigma score of the true record can rank low when its own sigma is far from the middle)
            labels = torch.tensor(
                [int((b.class_emb.double() @ draw.z.double()).argmax()), int(delta["head.bias"].argmax())]
            )
            same_label = torch.isin(pool.y, labels).nonzero().flatten()
            top = torch.unique(torch.cat([s.argsort(descending=True)[:shortlist], same_label]))
            d = candidate_directions(
                block, pool.x[top], pool.y[top], torch.full((len(top),), draw.sigma), draw.z.expand(len(top), -1)
            )
            est = (d.double() @ u[t]) / (d.double().norm(dim=1) * u[t].norm()).clamp_min(1e-300)
            s[top] = torch.maximum(s[top], est)
        else:
            draw = None
        order = s.argsort(descending=True)
        out.append(Identification(order, s[order].float(), draw))
    return out


def identify_sums(
    block: nn.Module, block_index: int, deltas: list[Delta], pool: CandidatePool, records: int, draws: int = 0
) -> list[Identification]:
    """Greedy pool search (orthogonal matching pursuit) for the `records` records behind each sum of updates, at
    the block's middle sigma and clean class embeddings; batched over the sums. Pass m over the pool adds the
    products with each sum's m-th picked direction, so the residual scores <d_j, u - B c> / ||d_j|| need no
    [N, P] matrix (records passes in all)."""
    _classifier(block)
    n, k = len(pool.x), min(records, len(pool.x))
    hyp = sum_draws(block, block_index, pool.y, draws)
    u = _vectors(block, deltas)  # [T, P]
    norms, du = pool.products(block, hyp, u)  # [N], [N, T]
    picked: list[list[int]] = [[] for _ in deltas]
    scores: list[list[float]] = [[] for _ in deltas]
    basis: list[list[torch.Tensor]] = [[] for _ in deltas]
    db: list[torch.Tensor] = [torch.zeros((n, 0), dtype=torch.float64) for _ in deltas]
    coef: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64) for _ in deltas]
    for step in range(k):
        new_dirs = []
        for t in range(len(deltas)):
            s = (du[:, t] - db[t] @ coef[t]) / norms.clamp_min(1e-300)
            if picked[t]:
                s[torch.tensor(picked[t])] = -math.inf
            j = int(s.argmax())
            picked[t].append(j)
            scores[t].append(float(s[j]))
            if step < k - 1:
                d = pool.directions(block, hyp, slice(j, j + 1))
                basis[t].append(d[0].double())
                new_dirs.append(d[0].double())
        if step == k - 1:
            break
        _, new = pool.products(block, hyp, torch.stack(new_dirs))  # [N, T]
        for t in range(len(deltas)):
            db[t] = torch.cat([db[t], new[:, t : t + 1]], dim=1)
            bmat = torch.stack(basis[t]).T  # [P, m]
            coef[t] = torch.linalg.lstsq(bmat, u[t].unsqueeze(1)).solution.squeeze(1)
    return [Identification(torch.tensor(p), torch.tensor(s), None) for p, s in zip(picked, scores)]
