"""Masked diffusion language model (MD4-style absorbing state) split into DiffusionBlocks by the masking schedule.

Forward process. A clean byte sequence x_0 (length L) is corrupted at time t in [0, 1] by replacing each token,
independently, with the absorbing token [MASK] = 256 with probability 1 - alpha(t). alpha is decreasing with
alpha(0) = 1 and alpha(1) = 0; `Config.schedule` picks it:
  linear  alpha(t) = 1 - t                   (the default, MD4's choice for text8)
  cosine  alpha(t) = 1 - cos(pi/2 (1 - t))   (MD4's cosine schedule)
The mask rate m = 1 - alpha(t) is what a network sees; it needs no time input (the number of [MASK] tokens
tells the noise level), so every network is a plain bidirectional transformer from x_t to logits over bytes.

ELBO (continuous time, MD4 eq. 4), in nats per sequence:
  -log p(x_0) <= integral_0^1  alpha'(t) / (1 - alpha(t))  sum_{i: x_t^i = MASK} log p_theta(x_0^i | x_t) dt
Substituting m = 1 - alpha(t) (dm = -alpha'(t) dt) removes the schedule:
  NELBO = integral_0^1 (1/m) E_{x_m}[ sum_{masked i} -log p_theta(x_0^i | x_m) ] dm,
so bits per byte (BPC) = NELBO / (L ln 2), estimated on held-out windows with a fixed, stratified set of
mask rates per window (`evaluate`). An untrained network predicting uniform bytes scores log2(256) = 8.

Blocks. The B blocks split the schedule by equal drops in alpha (the paper's rule for masked diffusion; the
image side splits by equal probability over sigma instead): block k owns alpha in [1 - (k+1)/B, 1 - k/B],
i.e. mask rates m in [k/B, (k+1)/B], i.e. t in [alpha^-1(1 - k/B), alpha^-1(1 - (k+1)/B)]. Block 0 sees almost
clean text, block B-1 almost only masks. Each block is a full small transformer (its own byte and position
embeddings, total_layers / B layers, its own head) trained only on mask rates of its interval (widened by
`overlap` x the interval width on each side, clipped to [0, 1]); evaluation and sampling ask the block owning
each t. The end-to-end baseline is one transformer of total_layers layers trained on all of [0, 1].

Matched updates: every parameter receives `steps` AdamW updates of `batch_size` windows, with the same learning
rate schedule (linear warm-up, cosine decay) - the baseline `steps` steps over all mask rates, each block
`steps` steps over its interval, one block after another. Both therefore do the same forward/backward compute
(B blocks of L/B layers x steps = L layers x steps, plus B embeddings and heads); the blocks see B x as many
training windows, drawn from the same training split.

Training loss per example: the masked tokens' cross-entropy averaged over the masked tokens of that example
(0 when none is masked). Given m its expectation equals the ELBO integrand (1/(m L)) sum_masked CE, with less
variance at small m; `block_loss` returns it per example, so Opacus DP-SGD can train one block.

Sampling (ancestral, MD4 Alg. 2): from t = 1 (all masked after the prompt) down to 0 in `sample_steps` equal
steps of t; at each step s < t every masked position is unmasked with probability (alpha(s) - alpha(t)) /
(1 - alpha(t)), its byte drawn from the owning block's p(x_0 | x_t); unmasked tokens stay (carry-over).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .text import VOCAB_SIZE, TokenStream

MASK = VOCAB_SIZE  # the absorbing token, 256
SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class Config:
    """The text-mdm preset (its defaults): a byte-level MDM small enough to train on a CPU in minutes."""

    seq_len: int = 64  # bytes per training/evaluation window
    total_layers: int = 6  # depth of the end-to-end model; each block gets total_layers / num_blocks
    num_blocks: int = 3  # B
    width: int = 128  # model dimension
    heads: int = 4
    mlp_ratio: int = 4
    steps: int = 300  # AdamW updates per parameter (per block, and for the end-to-end model)
    batch_size: int = 32  # windows per update
    lr: float = 2e-3  # peak learning rate
    warmup: int = 40  # linear warm-up steps, then cosine decay to lr / 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    schedule: str = "linear"  # alpha(t): linear | cosine
    overlap: float = 0.0  # each block's training interval widened by this fraction of its width per side
    sample_steps: int = 64  # ancestral sampling steps from t = 1 to 0
    eval_points: int = 12  # mask rates per held-out window (stratified over [0, 1], so B | eval_points is even)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if self.total_layers % self.num_blocks:
            raise ValueError(f"{self.total_layers} layers cannot be split into {self.num_blocks} equal blocks")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must lie in [0, 1), got {self.overlap}")


# ---------------------------------------------------------------------------------------------------
# the masking schedule and its partition into blocks
# ---------------------------------------------------------------------------------------------------
def alpha(t, schedule: str = "linear"):
    """Probability that a token is still clean at time t (1 at t = 0, 0 at t = 1); works on floats and arrays."""
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 1.0 - np.cos(np.pi / 2 * (1.0 - np.asarray(t, dtype=np.float64)))
    raise ValueError(f"unknown schedule {schedule!r}")


def alpha_inverse(a, schedule: str = "linear"):
    """The t with alpha(t) = a."""
    if schedule == "linear":
        return 1.0 - a
    if schedule == "cosine":
        return 1.0 - 2.0 / np.pi * np.arccos(1.0 - np.asarray(a, dtype=np.float64))
    raise ValueError(f"unknown schedule {schedule!r}")


def block_alpha_intervals(num_blocks: int) -> list[tuple[float, float]]:
    """(alpha_low, alpha_high) owned by each block: equal drops of 1/B, block 0 the cleanest."""
    return [(1.0 - (k + 1) / num_blocks, 1.0 - k / num_blocks) for k in range(num_blocks)]


def block_t_intervals(num_blocks: int, schedule: str = "linear") -> list[tuple[float, float]]:
    """(t_start, t_end) owned by each block: the times where alpha(t) lies in the block's alpha interval."""
    return [
        (float(alpha_inverse(hi, schedule)), float(alpha_inverse(lo, schedule)))
        for lo, hi in block_alpha_intervals(num_blocks)
    ]


def owner_of_mask_rate(m: float, num_blocks: int) -> int:
    """The block owning mask rate m = 1 - alpha(t)."""
    return min(int(m * num_blocks), num_blocks - 1)


def owner_of_t(t: float, num_blocks: int, schedule: str = "linear") -> int:
    return owner_of_mask_rate(1.0 - float(alpha(t, schedule)), num_blocks)


def training_mask_interval(cfg: Config, block: int, end_to_end: bool) -> tuple[float, float]:
    """Mask rates a block trains on: its own [k/B, (k+1)/B] widened by the overlap (everything end to end)."""
    if end_to_end:
        return 0.0, 1.0
    width = 1.0 / cfg.num_blocks
    lo, hi = block * width, (block + 1) * width
    return max(0.0, lo - cfg.overlap * width), min(1.0, hi + cfg.overlap * width)


# ---------------------------------------------------------------------------------------------------
# networks: each block (or the baseline) is a bidirectional transformer x_t -> logits over bytes
# ---------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention (every position sees every position) from nn.Linear layers."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Layer(nn.Module):
    """Pre-LayerNorm transformer layer: h + attn(LN h), then h + MLP(LN h)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))


class Denoiser(nn.Module):
    """One block (or the whole baseline): byte+[MASK] and position embeddings, `depth` layers, a byte head.

    forward(x_t: LongTensor (batch, n) with ids in 0..256) -> logits (batch, n, 256) of p(x_0 | x_t)."""

    def __init__(self, cfg: Config, depth: int):
        super().__init__()
        self.tok = nn.Embedding(VOCAB_SIZE + 1, cfg.width)
        self.pos = nn.Embedding(cfg.seq_len, cfg.width)
        self.layers = nn.ModuleList(Layer(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, VOCAB_SIZE)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.weight)  # starts at the uniform distribution over bytes: 8 bits per byte

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        # batched and contiguous, for Opacus (its ghost clipping reshapes the embedding input)
        positions = torch.arange(x_t.shape[1], device=x_t.device).expand_as(x_t).contiguous()
        h = self.tok(x_t) + self.pos(positions)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h))


class MaskedDiffusionLM(nn.Module):
    """B denoisers, one per block of the masking schedule (B = 1 and all layers for the end-to-end baseline)."""

    def __init__(self, cfg: Config, end_to_end: bool):
        super().__init__()
        self.end_to_end = end_to_end
        self.num_blocks = 1 if end_to_end else cfg.num_blocks
        depth = cfg.total_layers if end_to_end else cfg.total_layers // cfg.num_blocks
        self.denoisers = nn.ModuleList(Denoiser(cfg, depth) for _ in range(self.num_blocks))

    def owner(self, mask_rate: float) -> int:
        return owner_of_mask_rate(mask_rate, self.num_blocks)


def build(cfg: Config, *, end_to_end: bool, seed: int) -> MaskedDiffusionLM:
    torch.manual_seed(seed)
    return MaskedDiffusionLM(cfg, end_to_end)


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------
def corrupt(x0: torch.Tensor, mask_rate: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x_t: each token of row b replaced by [MASK] with probability mask_rate[b]."""
    u = torch.rand(x0.shape, generator=gen, device="cpu").to(x0.device)
    return torch.where(u < mask_rate[:, None], torch.full_like(x0, MASK), x0)


def masked_cross_entropy(logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """(batch, n) cross-entropy in nats of the clean bytes at masked positions (0 elsewhere)."""
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
    return ce * (x_t == MASK)


def block_loss(
    model: MaskedDiffusionLM,
    cfg: Config,
    block: int,
    batch: torch.Tensor,
    gen: torch.Generator,
    *,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-example training loss (batch,) of `block` on clean windows `batch`: mask rates drawn stratified over
    the block's training interval (one per example), masked-token cross-entropy averaged per example.
    `forward` replaces the block's forward (e.g. an Opacus GradSampleModule wrapping model.denoisers[block])."""
    lo, hi = training_mask_interval(cfg, block, model.end_to_end)
    n = batch.shape[0]
    u = (torch.arange(n) + torch.rand(n, generator=gen)) / n  # stratified in [0, 1): low-variance batches
    m = (lo + (hi - lo) * u[torch.randperm(n, generator=gen)]).clamp_min(1e-4).to(batch.device)
    x_t = corrupt(batch, m, gen)
    logits = (forward or model.denoisers[block])(x_t)
    ce = masked_cross_entropy(logits, batch, x_t)
    return ce.sum(1) / (x_t == MASK).sum(1).clamp_min(1)


def _lr_at(cfg: Config, step: int, steps: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(net: nn.Module, cfg: Config) -> torch.optim.AdamW:
    return torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)


def train(
    model: MaskedDiffusionLM,
    cfg: Config,
    stream: TokenStream,
    *,
    seed: int,
    steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    blocks: list[int] | None = None,
) -> dict:
    """Train the blocks one after another (each with its own AdamW; the others take no part), or the baseline.

    on_step(global_step, loss) is called after every update; global_step counts over blocks (block k's steps
    are k * steps + 1 .. (k + 1) * steps). Returns seconds and steps per block."""
    steps = steps or cfg.steps
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    stats: dict = {"steps_per_block": steps, "blocks": [], "seconds": 0.0}
    t0 = time.perf_counter()
    model.train()
    for k in blocks if blocks is not None else range(model.num_blocks):
        net = model.denoisers[k]
        opt = make_optimizer(net, cfg)
        tb, last = time.perf_counter(), float("nan")
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, step, steps)
            batch = stream.batch(rng, cfg.batch_size, cfg.seq_len).to(device)
            loss = block_loss(model, cfg, k, batch, gen).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            last = float(loss.detach())
            if on_step is not None:
                on_step(k * steps + step + 1, last)
        del opt
        stats["blocks"].append({"block": k, "steps": steps, "seconds": time.perf_counter() - tb, "last_loss": last})
    model.eval()
    stats["seconds"] = time.perf_counter() - t0
    return stats


# ---------------------------------------------------------------------------------------------------
# evaluation: BPC from the ELBO
# ---------------------------------------------------------------------------------------------------
def eval_mask_rates(num_windows: int, points: int, seed: int) -> np.ndarray:
    """(num_windows, points) mask rates, stratified: window w's j-th rate lies in [j/points, (j+1)/points)."""
    u = np.random.default_rng(seed).random((num_windows, points))
    return (np.arange(points)[None, :] + u) / points


@torch.no_grad()
def nelbo_bits(model: MaskedDiffusionLM, windows: torch.Tensor, mask_rates: np.ndarray, seed: int) -> np.ndarray:
    """Per-window ELBO estimate in bits per byte: mean over the window's mask rates m of
    (1/m) sum_masked -log2 p(x_0^i | x_m) / L, each m scored by the block owning it."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    n, length = windows.shape
    bits = np.zeros(n)
    for j in range(mask_rates.shape[1]):
        m = torch.as_tensor(mask_rates[:, j], dtype=torch.float32)
        x0 = windows.to(device)
        x_t = corrupt(x0, m.to(device), gen)
        owners = [model.owner(float(r)) for r in mask_rates[:, j]]
        ce = torch.zeros(n, device=device)
        for k in sorted(set(owners)):
            rows = torch.tensor([i for i, o in enumerate(owners) if o == k], device=device)
            logits = model.denoisers[k](x_t[rows])
            ce[rows] = masked_cross_entropy(logits, x0[rows], x_t[rows]).sum(1)
        bits += (ce.cpu().double() / m.double()).numpy() / (length * math.log(2))
    return bits / mask_rates.shape[1]


def evaluate(
    model: MaskedDiffusionLM, cfg: Config, stream: TokenStream, *, seed: int = 0, max_windows: int = 64
) -> dict[str, float]:
    """BPC (bits per byte, upper bound from the ELBO) on the first `max_windows` windows of `stream`, with
    cfg.eval_points stratified mask rates per window (fixed by `seed`: every model gets the same masks)."""
    windows = stream.windows(cfg.seq_len, max_windows)
    rates = eval_mask_rates(len(windows), cfg.eval_points, seed)
    bits = nelbo_bits(model, windows, rates, seed)
    return {
        "bpc": float(bits.mean()),
        "bpc_se": float(bits.std(ddof=1) / math.sqrt(len(bits))) if len(bits) > 1 else float("nan"),
        "windows": float(len(bits)),
        "bytes": float(windows.numel()),
    }


# ---------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def infill(
    model: MaskedDiffusionLM, cfg: Config, context: torch.Tensor, new_tokens: int, gen: torch.Generator
) -> torch.Tensor:
    """`new_tokens` bytes after `context` (len(context) + new_tokens <= seq_len) by ancestral unmasking from
    t = 1 to 0 in cfg.sample_steps steps, each step by the block owning it."""
    device = next(model.parameters()).device
    x = torch.cat([context.cpu(), torch.full((new_tokens,), MASK, dtype=torch.long)])[None].to(device)
    ts = np.linspace(1.0, 0.0, cfg.sample_steps + 1)
    for t, s in zip(ts[:-1], ts[1:], strict=True):
        masked = x == MASK
        if not masked.any():
            break
        a_t, a_s = float(alpha(t, cfg.schedule)), float(alpha(s, cfg.schedule))
        p_unmask = 1.0 if s <= 0 else (a_s - a_t) / max(1e-12, 1.0 - a_t)
        k = model.owner(1.0 - 0.5 * (a_t + a_s))  # the block owning the step's middle (t itself at B = 1)
        probs = torch.softmax(model.denoisers[k](x).double(), -1)[0]
        draw = torch.multinomial(probs.cpu(), 1, generator=gen)[:, 0].to(device)
        unmask = masked[0] & (torch.rand(x.shape[1], generator=gen).to(device) < p_unmask)
        x[0, unmask] = draw[unmask]
    return x[0, len(context) :].cpu()


def sample(model: MaskedDiffusionLM, cfg: Config, prompt: np.ndarray, *, new_tokens: int, seed: int) -> np.ndarray:
    """`new_tokens` bytes after `prompt`: infilled in one pass when they fit in the window after the prompt,
    else window by window (each new chunk infilled after the last half window of text), so any length works.
    Returns the new ids."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be at least 1, got {new_tokens}")
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    text = torch.as_tensor(np.asarray(prompt, dtype=np.int64).reshape(-1), dtype=torch.long)
    start = len(text)
    while len(text) - start < new_tokens:
        kept = min(len(text), max(cfg.seq_len // 2, cfg.seq_len - (new_tokens - (len(text) - start))))
        chunk = min(new_tokens - (len(text) - start), cfg.seq_len - kept)
        context = text[len(text) - kept :] if kept else text[:0]
        text = torch.cat([text, infill(model, cfg, context, chunk, gen)])
    return text[start:].numpy()
