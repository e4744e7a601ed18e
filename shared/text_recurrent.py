"""Recurrent-depth language models (Huginn-style) trained two ways: truncated BPTT, or DiffusionBlocks.

Architecture (Geiping et al. 2025, "Scaling up test-time compute with latent reasoning"), byte tokens:
  prelude  P: token + position embedding, `prelude_layers` causal layers           -> e   [B, T, d]
  core     R: ONE shared block, s <- LN(layers(adapter([s ; e])))  applied r times  (`core_layers` layers)
  coda     C: `total_layers - prelude_layers - core_layers` causal layers, LN, head  -> next-token logits
All layers are pre-LN transformer layers (causal attention via scaled_dot_product_attention with an explicit
boolean mask, GELU MLP), built from nn.Linear / nn.Embedding / nn.LayerNorm so Opacus' grad samplers apply.

Two ways to train the same-sized network (`build(cfg, end_to_end=...)`):

* Baseline (end_to_end=True), as Huginn: the state starts as noise s_0 ~ N(0, state_init_std^2), the number of
  iterations r is drawn per step from Huginn's log-normal Poisson (tau ~ N(ln(rbar) - v^2/2, v^2),
  r = 1 + Poisson(e^tau - 1) clipped to >= 1, so E[r] ~ rbar), the first r - k iterations run without gradient
  and the last k = `bptt_k` carry it (truncated BPTT); loss = next-token cross-entropy of the coda's logits.
  Inference: `eval_recurrence` iterations, then the coda.

* DiffusionBlocks (end_to_end=False): the recurrent state is the noisy embedding z of the NEXT token, one fixed
  (seeded, frozen) row E[y] of norm `target_norm` per byte, noised as in EDM: z = E[y] + sigma eps, with ln sigma
  ~ N(p_mean, p_std^2) on [sigma_min, sigma_max], one sigma per sequence. The shared core is a denoiser: it takes
  [c_in z ; e] through the same adapter and layers (AdaLN-Zero conditioned on c_noise = ln(sigma)/4), the coda
  reads the next-token logits, and D(z, sigma) = softmax(logits) @ E. Training is ONE pass of prelude + core +
  coda per step at a random sigma (loss: plain cross-entropy of the logits, as the product's classifier blocks
  with `classifier_weighting="none"`), so there is no backpropagation through time at all. Inference keeps the
  multi-step recurrence: `eval_recurrence` Euler steps z <- z + (s_{j+1} - s_j)(z - D)/s_j on the grid of
  NoiseSchedule(num_blocks=1).block_grid(r) (from the schedule's inference start down to sigma_min, then 0), each
  step one core + coda pass; the last step's logits give the token. The whole recurrence is one shared block
  (num_blocks = 1: every step is the same weights), so the paper's B-way memory split does not apply here; what
  changes is the training cost per step (1 core pass instead of r forward + k backward).

What the paper says (v3 summary, seeds/002): Huginn's 4-layer core averages 32 passes and trains with 8-step
truncated BPTT; DiffusionBlocks replaces it with a single forward pass per training step and keeps multi-step
inference; 15 vs 5 epochs, about 10x less compute, MAUVE 0.70 vs 0.49 on LM1B. The paper does not say how the
state is made a diffusion variable; the next-token-embedding choice above is ours (the same target as the
autoregressive DiffusionBlocks row), stated here so the numbers can be read for what they are.

Causality in the DiffusionBlocks model: position i's z carries (a noisy) token i+1, and position i attends to
positions <= i only, whose z carry tokens <= i: never a token after the one being predicted. During generation
the prefix positions' z are their known next tokens noised to the current sigma (as in training, one sigma for
the whole sequence), and only the last position follows its own trajectory.

Training compute is counted analytically (`step_flops`): 2 FLOPs per multiply-add of every Linear and of the
attention products (q k^T and a v, full T x T as the kernels compute it), forward once per pass that runs, and
backward = 2 x forward for every pass that carries gradient (input and weight gradients); norms, softmax and
elementwise work are left out (the same for both models).
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

from .schedule import NoiseSchedule
from .text import VOCAB_SIZE, TokenStream
from .textnn import FeedForward, MaskedAttention, causal_mask


@dataclass(frozen=True)
class Config:
    """The text-recurrent preset. Layer counts are distinct layers; the core's are reused r times."""

    seq_len: int = 64
    total_layers: int = 4  # prelude + core + coda
    prelude_layers: int = 1
    core_layers: int = 2
    num_blocks: int = 1  # one shared core block, applied r times
    width: int = 96
    heads: int = 4
    mlp_ratio: float = 2.0
    mean_recurrence: int = 12  # rbar: expected r while training (Huginn: 32)
    recurrence_spread: float = 0.5  # std of tau in Huginn's log-normal Poisson
    max_recurrence: int = 48
    bptt_k: int = 8  # baseline: iterations that carry gradient (Huginn: 8)
    eval_recurrence: int = 12  # iterations (baseline) / Euler steps (DiffusionBlocks) at inference
    state_init_std: float = 1.0
    target_norm: float = 1.0  # L2 norm of each next-token embedding row E[y] (DiffusionBlocks)
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    steps: int = 400
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 50
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.prelude_layers < 1 or self.core_layers < 1 or self.coda_layers < 1:
            raise ValueError(
                f"need >= 1 prelude, core and coda layer; total_layers={self.total_layers}, "
                f"prelude_layers={self.prelude_layers}, core_layers={self.core_layers}"
            )
        if self.num_blocks != 1:
            raise ValueError("text-recurrent has one shared core block: num_blocks must be 1")
        if min(self.bptt_k, self.mean_recurrence, self.eval_recurrence) < 1:
            raise ValueError("bptt_k, mean_recurrence and eval_recurrence must be >= 1")

    @property
    def coda_layers(self) -> int:
        return self.total_layers - self.prelude_layers - self.core_layers

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(
            num_blocks=1,
            p_mean=self.p_mean,
            p_std=self.p_std,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            sigma_data=self.sigma_data,
            gamma=0.0,
        )


# ---------------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------------
class Layer(nn.Module):
    """Pre-LN causal transformer layer; with `conditioned`, AdaLN-Zero: LN without affine, then shift/scale/gate
    from a per-sequence condition vector c (zero-initialised, so the layer starts as the identity)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, conditioned: bool) -> None:
        super().__init__()
        self.conditioned = conditioned
        self.norm1 = nn.LayerNorm(width, elementwise_affine=not conditioned)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=not conditioned)
        self.attn, self.mlp = MaskedAttention(width, heads), FeedForward(width, mlp_ratio)
        if conditioned:
            self.modulation = nn.Linear(width, 6 * width)
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if not self.conditioned:
            h = h + self.attn(self.norm1(h), mask)
            return h + self.mlp(self.norm2(h))
        assert c is not None
        s1, g1, a1, s2, g2, a2 = self.modulation(c).unsqueeze(1).chunk(6, dim=-1)
        h = h + a1 * self.attn(self.norm1(h) * (1 + g1) + s1, mask)
        return h + a2 * self.mlp(self.norm2(h) * (1 + g2) + s2)


def noise_features(c_noise: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal features [B, width] of c_noise = ln(sigma)/4 (frequencies 1 .. 1000, geometric)."""
    half = width // 2
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), half, device=c_noise.device))
    arg = c_noise[:, None] * freqs[None]
    return torch.cat([arg.cos(), arg.sin()], dim=-1)


class RecurrentLM(nn.Module):
    """Prelude -> shared core applied r times -> coda. `diffusion` selects the DiffusionBlocks core (a denoiser
    of the next-token embedding, sigma-conditioned) instead of Huginn's plain recurrent core."""

    targets: torch.Tensor  # DiffusionBlocks: the frozen next-token embedding rows E [V, d] (a buffer)

    def __init__(self, cfg: Config, *, diffusion: bool, seed: int) -> None:
        super().__init__()
        self.cfg, self.diffusion = cfg, diffusion
        d = cfg.width
        self.token_embedding = nn.Embedding(VOCAB_SIZE, d)
        self.position_embedding = nn.Embedding(cfg.seq_len, d)
        self.prelude = nn.ModuleList(Layer(d, cfg.heads, cfg.mlp_ratio, False) for _ in range(cfg.prelude_layers))
        self.adapter = nn.Linear(2 * d, d)  # [state ; e] -> d, Huginn's input injection
        self.core = nn.ModuleList(Layer(d, cfg.heads, cfg.mlp_ratio, diffusion) for _ in range(cfg.core_layers))
        self.core_norm = nn.LayerNorm(d)
        self.coda = nn.ModuleList(Layer(d, cfg.heads, cfg.mlp_ratio, diffusion) for _ in range(cfg.coda_layers))
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB_SIZE)
        if diffusion:
            self.noise_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            g = torch.Generator().manual_seed(seed)
            rows = torch.randn(VOCAB_SIZE, d, generator=g)
            self.register_buffer("targets", cfg.target_norm * rows / rows.norm(dim=1, keepdim=True))
        self.core_calls = 0  # core passes run (a counter the tests read)

    # -- pieces -------------------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prelude: e [B, T, d] from tokens [B, T]."""
        t = tokens.shape[1]
        h = self.token_embedding(tokens) + self.position_embedding(torch.arange(t, device=tokens.device))
        mask = causal_mask(t, tokens.device)
        for layer in self.prelude:
            h = layer(h, mask)
        return h

    def core_step(self, state: torch.Tensor, e: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """One application of the shared core block."""
        self.core_calls += 1
        mask = causal_mask(e.shape[1], e.device)
        h = self.adapter(torch.cat([state, e], dim=-1))
        for layer in self.core:
            h = layer(h, mask, c)
        return self.core_norm(h)

    def read(self, state: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Coda: next-token logits [B, T, V] from the state."""
        mask = causal_mask(state.shape[1], state.device)
        h = state
        for layer in self.coda:
            h = layer(h, mask, c)
        return self.head(self.final_norm(h))

    # -- baseline: Huginn recurrence --------------------------------------------------------------------
    def initial_state(self, shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
        return self.cfg.state_init_std * torch.randn(shape, generator=generator)

    def recur(
        self,
        tokens: torch.Tensor,
        r: int,
        *,
        k: int | None = None,
        state0: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Baseline logits after r core iterations; only the last k (None: all) carry gradient."""
        assert not self.diffusion
        e = self.embed(tokens)
        s = self.initial_state(e.shape, generator) if state0 is None else state0
        free = 0 if k is None else max(r - k, 0)
        with torch.no_grad():
            for _ in range(free):
                s = self.core_step(s, e)
        for _ in range(r - free):
            s = self.core_step(s, e)
        return self.read(s)

    # -- DiffusionBlocks: the core as a denoiser ----------------------------------------------------------
    def denoise_logits(self, e: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Next-token logits of the denoiser at noise level sigma [B] for noisy next-token embeddings z."""
        assert self.diffusion
        c_skip, c_out, c_in, c_noise = self.cfg.schedule().precondition(sigma)
        c = self.noise_mlp(noise_features(c_noise, self.cfg.width))
        state = self.core_step(c_in[:, None, None] * z, e, c)
        return self.read(state, c)

    def denoised(self, logits: torch.Tensor) -> torch.Tensor:
        """D(z, sigma) = E_{p(y)}[E[y]] = softmax(logits) @ E."""
        return logits.float().softmax(-1) @ self.targets

    def diffuse(
        self,
        tokens: torch.Tensor,
        steps: int,
        *,
        generator: torch.Generator | None = None,
        known_next: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Euler sampling of the next-token embedding at every position (all positions follow their own
        trajectory) or, with `known_next` [B, T-1], only at the last position (the others are their known next
        tokens noised to the current sigma). Returns the last step's logits [B, T, V]."""
        grid = self.cfg.schedule().block_grid(steps)
        e = self.embed(tokens)
        b, t, d = e.shape
        z = float(grid[0]) * torch.randn(b, t, d, generator=generator)
        prefix_noise = torch.randn(b, t, d, generator=generator)
        logits = torch.empty(0)
        for j in range(steps):
            s_now, s_next = float(grid[j]), float(grid[j + 1])
            if known_next is not None and t > 1:
                z = torch.cat([self.targets[known_next] + s_now * prefix_noise[:, :-1], z[:, -1:]], dim=1)
            logits = self.denoise_logits(e, z, torch.full((b,), s_now))
            d_hat = self.denoised(logits)
            z = z + (s_next - s_now) * (z - d_hat) / s_now
        return logits


def build(cfg: Config, *, end_to_end: bool, seed: int) -> RecurrentLM:
    """end_to_end=True: Huginn baseline trained with truncated BPTT; False: DiffusionBlocks core."""
    torch.manual_seed(seed)
    return RecurrentLM(cfg, diffusion=not end_to_end, seed=seed)


# ---------------------------------------------------------------------------------------------------
# recurrence count and compute
# ---------------------------------------------------------------------------------------------------
def sample_recurrence(cfg: Config, rng: np.random.Generator) -> int:
    """Huginn's log-normal Poisson: tau ~ N(ln(rbar) - v^2/2, v^2), r = 1 + Poisson(max(e^tau - 1, 0)),
    clipped to [1, max_recurrence]. E[r] ~ rbar."""
    v = cfg.recurrence_spread
    tau = rng.normal(math.log(cfg.mean_recurrence) - v * v / 2, v)
    r = 1 + int(rng.poisson(max(math.exp(tau) - 1.0, 0.0)))
    return min(max(r, 1), cfg.max_recurrence)


def layer_flops(cfg: Config, tokens: int, seq_len: int) -> float:
    """Forward FLOPs of one transformer layer on `tokens` tokens in sequences of `seq_len`."""
    d, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
    linear = 2 * tokens * (4 * d * d + 2 * d * hidden)
    attention = 2 * 2 * tokens * seq_len * d  # q k^T and a v over the full T x T
    return float(linear + attention)


def step_flops(cfg: Config, *, diffusion: bool, r: int, batch_size: int | None = None) -> float:
    """Analytic training FLOPs of one step (forward + backward) at recurrence r (baseline) or one pass (DB)."""
    b = cfg.batch_size if batch_size is None else batch_size
    tokens = b * cfg.seq_len
    f = layer_flops(cfg, tokens, cfg.seq_len)
    adapter = 2 * tokens * 2 * cfg.width * cfg.width
    head = 2 * tokens * cfg.width * VOCAB_SIZE
    prelude, coda = cfg.prelude_layers * f, cfg.coda_layers * f + head
    core = adapter + cfg.core_layers * f
    if diffusion:
        return 3 * (prelude + core + coda)
    with_grad = min(r, cfg.bptt_k)
    return (prelude + r * core + coda) + 2 * (prelude + with_grad * core + coda)


# ---------------------------------------------------------------------------------------------------
# train / evaluate / sample (the family contract)
# ---------------------------------------------------------------------------------------------------
def step_loss(model: RecurrentLM, batch: torch.Tensor, rng: np.random.Generator, g: torch.Generator) -> tuple:
    """(mean next-token cross-entropy in nats, r) of one training step on batch [B, T+1]."""
    cfg = model.cfg
    x, y = batch[:, :-1], batch[:, 1:]
    if not model.diffusion:
        r = sample_recurrence(cfg, rng)
        logits = model.recur(x, r, k=cfg.bptt_k, generator=g)
        return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1)), r
    sigma = cfg.schedule().sample_sigma(None, x.shape[0], generator=g)
    z = model.targets[y] + sigma[:, None, None] * torch.randn(*y.shape, cfg.width, generator=g)
    logits = model.denoise_logits(model.embed(x), z, sigma)
    return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1)), 1


def train(
    model: RecurrentLM,
    cfg: Config,
    stream: TokenStream,
    *,
    seed: int,
    steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """AdamW with linear warm-up and cosine decay; one shared block, so one optimizer over all parameters.
    Returns seconds, steps, the analytic training FLOPs, the recurrence drawn at each step (1 for
    DiffusionBlocks: one core pass) and its mean."""
    steps = cfg.steps if steps is None else steps
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(steps - cfg.warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    flops, rs, t0 = 0.0, [], time.perf_counter()
    for step in range(steps):
        batch = stream.batch(rng, cfg.batch_size, cfg.seq_len + 1)
        loss, r = step_loss(model, batch, rng, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        flops += step_flops(cfg, diffusion=model.diffusion, r=r)
        rs.append(r)
        if on_step is not None:
            on_step(step, loss.item())
    model.eval()
    return {
        "seconds": time.perf_counter() - t0,
        "steps": steps,
        "flops": flops,
        "mean_recurrence": float(np.mean(rs)),
        "core_passes_per_step": float(np.mean(rs)) if not model.diffusion else 1.0,
        "recurrences": rs,
    }


@torch.no_grad()
def next_token_logits(model: RecurrentLM, x: torch.Tensor, *, seed: int) -> torch.Tensor:
    """The model's next-token logits at every position of x [B, T]. Baseline: eval_recurrence iterations from a
    seeded initial state. DiffusionBlocks: one denoiser pass at the top of the inference grid (z pure noise),
    i.e. its single-pass estimate of p(next token | prefix); multi-step inference is for sampling."""
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    if not model.diffusion:
        return model.recur(x, cfg.eval_recurrence, generator=g)
    s_top = float(cfg.schedule().block_grid(1)[0])
    z = s_top * torch.randn(*x.shape, cfg.width, generator=g)
    return model.denoise_logits(model.embed(x), z, torch.full((x.shape[0],), s_top))


@torch.no_grad()
def evaluate(model: RecurrentLM, cfg: Config, stream: TokenStream, *, seed: int, max_windows: int = 64) -> dict:
    """{"bpb": bits per byte of next-token prediction on fixed held-out windows} (see next_token_logits for what
    each model's prediction is), with "windows" counted."""
    model.eval()
    windows = stream.windows(cfg.seq_len + 1, max_windows)
    total, count = 0.0, 0
    for i in range(0, len(windows), 16):
        batch = windows[i : i + 16]
        logits = next_token_logits(model, batch[:, :-1], seed=seed + i)
        total += float(F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), batch[:, 1:].reshape(-1), reduction="sum"))
        count += batch[:, 1:].numel()
    return {"bpb": total / count / math.log(2), "windows": float(len(windows))}


@torch.no_grad()
def sample_batch(
    model: RecurrentLM, prompts: torch.Tensor, *, new_tokens: int, seed: int, temperature: float = 1.0
) -> torch.Tensor:
    """Continuations [B, new_tokens] of prompts [B, P] (the context is cut to the last seq_len tokens).
    Baseline: eval_recurrence iterations per token, then a draw from softmax(logits / temperature).
    DiffusionBlocks: eval_recurrence Euler steps of the next-token embedding, then a draw from the last step's
    logits."""
    model.eval()
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    seq = prompts.clone()
    out = []
    for _ in range(new_tokens):
        ctx = seq[:, -cfg.seq_len :]
        if model.diffusion:
            logits = model.diffuse(ctx, cfg.eval_recurrence, generator=g, known_next=ctx[:, 1:])[:, -1]
        else:
            logits = model.recur(ctx, cfg.eval_recurrence, generator=g)[:, -1]
        nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=g)
        out.append(nxt)
        seq = torch.cat([seq, nxt], dim=1)
    return torch.cat(out, dim=1)


def sample(model: RecurrentLM, cfg: Config, prompt: np.ndarray, *, new_tokens: int, seed: int) -> np.ndarray:
    """Token ids of the continuation of one prompt (a 1-d array of byte ids)."""
    p = torch.as_tensor(np.asarray(prompt, dtype=np.int64))[None]
    if p.shape[1] == 0:
        p = torch.tensor([[ord("\n")]])
    return sample_batch(model, p, new_tokens=new_tokens, seed=seed)[0].numpy()
