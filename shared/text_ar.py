"""Autoregressive DiffusionBlocks for text (the paper's LM1B row, Appendix D.2), and its end-to-end baseline.

The next token is denoised block by block. Every position i of a window x_0..x_{T-1} carries a noisy copy of its own
token's target embedding, z_i = E[x_i] + sigma_i eps_i (eps_i ~ N(0, I_width); E: a fixed, seeded table of 256
random directions of L2 norm `target_scale`, identical in every block, as the image classifier's class embedding).
sigma is the EDM noise level of `shared.schedule.NoiseSchedule` (p_mean 0.0, see Config); block b of B owns one
equi-probable slice of its log-normal and trains on sigma drawn from that slice (widened by the overlap gamma). A
block is a causal transformer with its own embeddings, AdaLN-Zero layers and head: logits_i = f_b(x_<i, z_i,
sigma_i), trained with cross-entropy CE(logits_i, x_i) averaged over positions (the image classifier's "none"
weighting); the denoiser the sampler integrates is D(z_i, sigma_i) = softmax(logits_i) @ E, the posterior-mean
embedding.

Vectorised training (Block Diffusion, Arriola et al. 2025, block size 1): one forward pass over the concatenation
[clean x_0..x_{T-1} ; noisy z_0..z_{T-1}] (2T tokens) with the attention mask
  * clean query j  attends to clean keys k <= j (ordinary causal attention; never to a noisy key),
  * noisy query i  attends to clean keys k < i and to itself (its own noisy token), nothing else,
so noisy position i is conditioned on exactly the clean prefix x_<i, and no query sees a token at or after the
one it predicts except its own noisy copy (tests/text/test_ar.py checks this by perturbation). Clean and noisy
tokens at the same position share the learned position embedding; a stream embedding tells them apart. The
noise level conditions only the noisy tokens (per-token AdaLN; clean tokens get c = 0), so the clean stream
does not depend on sigma.

Sampling (`sample`): for each new token, z starts at `inference_start` * eps, Euler steps of the probability-flow
ODE dz/dsigma = (z - D)/sigma run over `NoiseSchedule.block_grid(steps_per_block)` (each step by the block that
owns its sigma), and the token is drawn from the softmax of the last step's logits (at sigma_min, nearly one-hot).
The end-to-end baseline (`CausalTransformer`) has the same width and the same total number of layers (pre-LN,
no AdaLN), trained with next-token cross-entropy on the same windows, the same number of updates per parameter
(each block `steps` updates; the baseline `steps` updates of all layers: the paper's matched layer updates).

Metrics that need a judge (`generative_perplexity`, `mauve_score`) take a separately trained end-to-end
`teacher`; `evaluate` computes them when one is passed. MAUVE (Pillutla et al. 2021) is implemented here with
scikit-learn (PCA to 90 % explained variance, KMeans with n/10 clusters, divergence curve with 25 mixture
weights, scaling 5, as the reference `mauve-text` defaults) on features of that local teacher: the mean of its
final normalised hidden states over the continuation's positions.
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

from .models import NoiseEmbedding, class_embedding
from .schedule import NoiseSchedule
from .text import VOCAB_SIZE, TokenStream
from .textnn import FeedForward, MaskedAttention, PreLNLayer, causal_mask


@dataclass(frozen=True)
class Config:
    """The text-ar preset (its defaults) and its model, noise and training settings.

    seq_len: window length in bytes (also the position table and the longest context). total_layers: layers of
    the whole model; each of the num_blocks blocks gets total_layers / num_blocks. steps: optimizer updates of
    each block (and of the end-to-end baseline). lr: peak AdamW rate, linear warm-up over `warmup` of the steps,
    cosine decay to 0. target_scale: L2 norm of each token's target embedding (sigma is in these units).
    p_mean, p_std: the log-normal of sigma. p_mean is 0.0, not the image preset's -1.2: the first block's main job
    is the context-only prediction (sigma > ~1.5, where z_i carries almost no information about a byte; the
    embeddings are 1.41 apart), and at -1.2 only ~11 % of its training draws land there, which left it at 4.4
    bits/byte at the sampler's first step against 3.45 for the baseline (seed 0, bench/text_ar.py).
    prev_token_input: the noisy token at position i also gets the embedding of x_{i-1} (which its mask lets it
    see anyway). Without it a block spends its first layer fetching the previous byte that an ordinary causal
    model has in its own residual stream: at 2 layers a block, block 0 reached only 4.2 bits/byte at the
    sampler's first step against 3.60 for a 2-layer causal model (seed 0, 300 updates).
    steps_per_block: sampler steps per block per sampled token; sampler: "euler" (probability-flow ODE) or
    "ancestral" (DDPM-style, a token drawn at every step). temperature: of every draw of a token. 12 Euler steps a
    block (48 a byte at B = 4; the paper samples with 50 Euler steps) were chosen on validation prompts among
    euler/ancestral x 2/4/8/12 by the lowest generative perplexity under the bench's teacher
    (bench/text_ar_sampler.py, 128 validation prompts: mean of 3 seeds 27.45 at 2 steps, 24.62 at 4, 24.05 at 8,
    23.62 at 12; end to end 22.68); training does not read these three fields.
    """

    seq_len: int = 64
    total_layers: int = 8
    num_blocks: int = 4
    width: int = 64
    heads: int = 4
    mlp_ratio: float = 4.0
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    grad_clip: float = 1.0
    target_scale: float = 1.0
    embedding_seed: int = 0
    p_mean: float = 0.0
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    gamma: float = 0.1
    prev_token_input: bool = True
    steps_per_block: int = 12
    sampler: str = "euler"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.total_layers % self.num_blocks:
            raise ValueError(
                f"total_layers ({self.total_layers}) must be a positive multiple of num_blocks ({self.num_blocks})"
            )
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if self.sampler not in ("euler", "ancestral"):
            raise ValueError(f"sampler must be 'euler' or 'ancestral', not {self.sampler!r}")
        if self.seq_len < 2 or self.steps < 1 or self.batch_size < 1 or self.steps_per_block < 1:
            raise ValueError("seq_len >= 2, steps >= 1, batch_size >= 1 and steps_per_block >= 1 are needed")

    @property
    def layers_per_block(self) -> int:
        return self.total_layers // self.num_blocks

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(
            num_blocks=self.num_blocks,
            p_mean=self.p_mean,
            p_std=self.p_std,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            gamma=self.gamma,
        )


# ---------------------------------------------------------------------------------------------------
# attention masks and layers
# ---------------------------------------------------------------------------------------------------
def clean_noisy_mask(num_clean: int, noisy_pos: torch.Tensor) -> torch.Tensor:
    """[Tc + Tn, Tc + Tn] bool mask over [clean x_0..x_{Tc-1} ; noisy tokens at positions noisy_pos].

    Clean query j: clean keys k <= j. Noisy query at position p: clean keys k < p and itself."""
    tn = len(noisy_pos)
    top = torch.cat([causal_mask(num_clean), torch.zeros(num_clean, tn, dtype=torch.bool)], dim=1)
    prefix = torch.arange(num_clean).unsqueeze(0) < noisy_pos.unsqueeze(1)
    bottom = torch.cat([prefix, torch.eye(tn, dtype=torch.bool)], dim=1)
    return torch.cat([top, bottom], dim=0)


class TokenAdaLNLayer(nn.Module):
    """AdaLN-Zero layer with a conditioning vector per token, c [B, T, width]:
    h += g1 Attn(LN(h)(1 + s1) + b1); h += g2 MLP(LN(h)(1 + s2) + b2); (b, s, g) = Linear(SiLU(c)), zero-initialised."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn, self.mlp = MaskedAttention(width, heads), FeedForward(width, mlp_ratio)
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b1, s1, g1, b2, s2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        h = h + g1 * self.attn(self.norm(h) * (1 + s1) + b1, mask)
        return h + g2 * self.mlp(self.norm(h) * (1 + s2) + b2)


# ---------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------
class ARDenoisingBlock(nn.Module):
    """One block: logits_i = f(x_<i, z_i, sigma_i) for the noisy target embeddings z_i of positions noisy_pos.

    Noisy token i = Linear(c_in z_i) + pos[i] + stream[1]; clean token k = tok[x_k] + pos[k] + stream[0].
    Head on the noisy tokens: u = c_out LN(h_i) + c_skip z_i, AdaLN-modulated by sigma_i, Linear -> 256 logits."""

    target_emb: torch.Tensor  # buffer [VOCAB_SIZE, width]

    def __init__(self, cfg: Config, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.schedule = schedule
        w = cfg.width
        self.register_buffer("target_emb", class_embedding(VOCAB_SIZE, w, cfg.target_scale, cfg.embedding_seed))
        self.tok = nn.Embedding(VOCAB_SIZE, w)
        self.pos = nn.Embedding(cfg.seq_len, w)
        self.stream = nn.Embedding(2, w)
        # the byte left of a noisy position (index 256: none, at position 0), an input of the noisy token
        self.prev = nn.Embedding(VOCAB_SIZE + 1, w) if cfg.prev_token_input else None
        self.noisy_in = nn.Linear(w, w)
        self.noise_emb = NoiseEmbedding(w)
        self.layers = nn.ModuleList(TokenAdaLNLayer(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers_per_block))
        self.norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.head_ada = nn.Linear(w, 2 * w)
        nn.init.zeros_(self.head_ada.weight)
        nn.init.zeros_(self.head_ada.bias)
        self.head = nn.Linear(w, VOCAB_SIZE)

    def streams(
        self, tokens: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, noisy_pos: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, c): final hidden states [B, Tc + Tn, width] of [clean tokens ; noisy tokens] (before the head's
        norm) and the noisy tokens' noise conditioning c [B, Tn, width] (each module runs once, for Opacus).

        tokens [B, Tc] clean ids, z [B, Tn, width], sigma [B, Tn], noisy_pos [Tn] (default 0..Tc-1, the
        vectorised training layout; sampling passes the prefix and one noisy token at position Tc)."""
        b, tc = tokens.shape
        if noisy_pos is None:
            noisy_pos = torch.arange(tc, device=tokens.device)
        _, _, c_in, c_noise = self.schedule.precondition(sigma)
        clean_pos = torch.arange(tc, device=tokens.device).expand(b, -1)
        h_clean = self.tok(tokens) + self.pos(clean_pos) + self.stream(torch.zeros_like(clean_pos))
        noisy_ids = noisy_pos.expand(b, -1)
        h_noisy = self.noisy_in(c_in.unsqueeze(-1) * z) + self.pos(noisy_ids) + self.stream(torch.ones_like(noisy_ids))
        if self.prev is not None:  # x_{i-1}: in the prefix noisy token i may see anyway
            left = torch.cat([torch.full((b, 1), VOCAB_SIZE, dtype=tokens.dtype, device=tokens.device), tokens], 1)
            h_noisy = h_noisy + self.prev(left[:, noisy_pos])
        h = torch.cat([h_clean, h_noisy], dim=1)
        c_n = self.noise_emb(c_noise)  # [B, Tn, width]; clean tokens are conditioned on c = 0
        c = torch.cat([torch.zeros(b, tc, c_n.shape[-1], device=z.device), c_n], dim=1)
        mask = clean_noisy_mask(tc, noisy_pos.cpu()).to(tokens.device)
        for layer in self.layers:
            h = layer(h, c, mask)
        return h, c_n

    def forward(
        self, tokens: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, noisy_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, Tn, 256] of the tokens under the noisy ones (arguments as `streams`)."""
        c_skip, c_out, _, _ = (t.unsqueeze(-1) for t in self.schedule.precondition(sigma))
        h, c_n = self.streams(tokens, z, sigma, noisy_pos)
        u = c_out * self.norm(h[:, tokens.shape[1] :]) + c_skip * z
        shift, scale = self.head_ada(F.silu(c_n)).chunk(2, dim=-1)
        return self.head(u * (1 + scale) + shift)

    def denoise(self, tokens, z, sigma, noisy_pos=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, logits): D = softmax(logits) @ E, the posterior-mean target embedding."""
        logits = self(tokens, z, sigma, noisy_pos)
        return logits.softmax(-1) @ self.target_emb, logits


class ARDiffusionBlocks(nn.Module):
    """B independent `ARDenoisingBlock`s; block b owns the b-th highest slice of sigma."""

    blocks: nn.ModuleList

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.schedule = cfg.schedule()
        self.blocks = nn.ModuleList(ARDenoisingBlock(cfg, self.schedule) for _ in range(cfg.num_blocks))


class CausalTransformer(nn.Module):
    """Standard causal transformer: logits [B, T, 256] of x_{t+1} given x_<=t (the baseline and the teacher)."""

    def __init__(self, cfg: Config, layers: int | None = None) -> None:
        super().__init__()
        w = cfg.width
        self.tok, self.pos = nn.Embedding(VOCAB_SIZE, w), nn.Embedding(cfg.seq_len, w)
        self.layers = nn.ModuleList(PreLNLayer(w, cfg.heads, cfg.mlp_ratio) for _ in range(layers or cfg.total_layers))
        self.norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, VOCAB_SIZE)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states [B, T, width]."""
        t = tokens.shape[1]
        h = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device).expand(tokens.shape[0], -1))
        mask = causal_mask(t).to(tokens.device)
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(tokens))


def build(cfg: Config, *, end_to_end: bool, seed: int) -> nn.Module:
    """The DiffusionBlocks model (end_to_end=False) or the baseline of the same width and total layers."""
    torch.manual_seed(seed)
    return CausalTransformer(cfg) if end_to_end else ARDiffusionBlocks(cfg)


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------
def block_loss(
    block: ARDenoisingBlock, block_index: int, tokens: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-window loss [B]: mean over positions i of CE(f_b(x_<i, E[x_i] + sigma_i eps_i, sigma_i), x_i), with
    sigma_i drawn independently per position from block b's training interval. Per window so that Opacus
    (per-sample clipping) can use it."""
    b, t = tokens.shape
    sigma = block.schedule.sample_sigma(block_index, b * t, generator).view(b, t).to(tokens.device)
    eps = torch.randn(b, t, block.target_emb.shape[1], generator=generator).to(tokens.device)
    z = block.target_emb[tokens] + sigma.unsqueeze(-1) * eps
    logits = block(tokens, z, sigma)
    return F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").mean(1)


def next_token_loss(model: CausalTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Per-window next-token cross-entropy [B] (nats per byte), predicting x_1..x_{T-1}."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)


def _optimizer(module: nn.Module, cfg: Config, steps: int):
    decay = [p for n, p in module.named_parameters() if p.ndim >= 2 and not n.endswith("bias")]
    rest = [p for n, p in module.named_parameters() if not (p.ndim >= 2 and not n.endswith("bias"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=cfg.lr
    )
    warm = max(1, int(cfg.warmup * steps))

    def factor(s: int) -> float:
        return (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm))))
        )

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _fit(module, loss_fn, cfg: Config, stream: TokenStream, seed: int, steps: int, on_step, offset: int) -> float:
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    opt, sched = _optimizer(module, cfg, steps)
    module.train()
    loss_val = float("nan")
    for s in range(steps):
        loss = loss_fn(stream.batch(rng, cfg.batch_size, cfg.seq_len), g).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {s}: lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        loss_val = loss.item()
        if on_step:
            on_step(offset + s + 1, loss_val)
    module.eval()
    return loss_val


def train(
    model: nn.Module,
    cfg: Config,
    stream: TokenStream,
    *,
    seed: int,
    steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Train the baseline end to end, or the blocks one after another (each with its own optimizer, only its own
    parameters in use). Every block and the baseline get `steps` updates on windows drawn with the same seed."""
    steps = steps or cfg.steps
    t0 = time.perf_counter()
    if isinstance(model, CausalTransformer):
        final = _fit(model, lambda x, g: next_token_loss(model, x), cfg, stream, seed, steps, on_step, 0)
        return {"seconds": time.perf_counter() - t0, "steps": steps, "final_loss": final}
    if not isinstance(model, ARDiffusionBlocks):
        raise TypeError(f"expected a model built by text_ar.build, got {type(model).__name__}")
    finals = [
        train_block(model, i, cfg, stream, seed=seed, steps=steps, on_step=on_step) for i in range(len(model.blocks))
    ]
    return {"seconds": time.perf_counter() - t0, "block_steps": [steps] * len(finals), "final_loss": finals}


def train_block(
    model: ARDiffusionBlocks,
    block_index: int,
    cfg: Config,
    stream: TokenStream,
    *,
    seed: int,
    steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """Train block `block_index` alone (its own optimizer; nothing of the other blocks is used), on the same
    windows and noise draws `train` gives it, so blocks may also be trained in parallel processes. Returns the
    last step's loss; on_step counts from block_index * steps."""
    steps = steps or cfg.steps
    block: ARDenoisingBlock = model.blocks[block_index]  # type: ignore[assignment]
    return _fit(
        block,
        lambda x, g: block_loss(block, block_index, x, g),
        cfg,
        stream,
        seed,
        steps,
        on_step,
        block_index * steps,
    )


# ---------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def _next_token_db(
    model: ARDiffusionBlocks, cfg: Config, context: torch.Tensor, grid: np.ndarray, g: torch.Generator
) -> torch.Tensor:
    """Denoise the token at position context.shape[1] over `grid` and draw it: ids [N].

    "euler": z <- z + (s' - s)(z - D)/s, the probability-flow ODE. "ancestral": draw a token x ~ softmax(logits)
    and z <- E[x] + (s'/s)^2 (z - E[x]) + (s'/s) sqrt(s^2 - s'^2) eps, the exact posterior q(z_s' | z_s, x) of
    the variance-exploding diffusion (DDPM's ancestral step with a sampled clean token)."""
    n, p = context.shape
    pos = torch.tensor([p])
    z = float(grid[0]) * torch.randn(n, 1, cfg.width, generator=g)
    logits = None
    for s, s_next in zip(grid[:-1], grid[1:]):
        s, s_next = float(s), float(s_next)
        block: ARDenoisingBlock = model.blocks[model.schedule.block_for_sigma(s)]  # type: ignore[assignment]
        d, logits = block.denoise(context, z, torch.full((n, 1), s), pos)
        if cfg.sampler == "euler":
            z = z + (s_next - s) * (z - d) / s
        else:
            x0 = block.target_emb[_draw(logits[:, 0], cfg.temperature, g)].unsqueeze(1)
            r = s_next / s
            z = x0 + r**2 * (z - x0) + r * math.sqrt(s**2 - s_next**2) * torch.randn(z.shape, generator=g)
    assert logits is not None
    return _draw(logits[:, 0], cfg.temperature, g)


def _draw(logits: torch.Tensor, temperature: float, g: torch.Generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    return torch.multinomial((logits / temperature).softmax(-1), 1, generator=g).squeeze(-1)


@torch.no_grad()
def sample_batch(model: nn.Module, cfg: Config, prompts: torch.Tensor, *, new_tokens: int, seed: int) -> torch.Tensor:
    """Continuations [N, new_tokens] of prompts [N, P] (a window of the last seq_len - 1 tokens is the context)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    seq = prompts.long()
    grid = model.schedule.block_grid(cfg.steps_per_block) if isinstance(model, ARDiffusionBlocks) else None
    for _ in range(new_tokens):
        ctx = seq[:, -(cfg.seq_len - 1) :]
        if isinstance(model, ARDiffusionBlocks):
            assert grid is not None
            nxt = _next_token_db(model, cfg, ctx, grid, g)
        else:
            nxt = _draw(model(ctx)[:, -1], cfg.temperature, g)
        seq = torch.cat([seq, nxt.unsqueeze(1)], dim=1)
    return seq[:, prompts.shape[1] :]


def sample(model: nn.Module, cfg: Config, prompt: np.ndarray, *, new_tokens: int, seed: int) -> np.ndarray:
    """Token ids of the continuation of one prompt (uint8 byte ids). An empty prompt starts from nothing."""
    p = torch.as_tensor(np.asarray(prompt, dtype=np.int64)).view(1, -1)
    if p.shape[1] == 0 and isinstance(model, CausalTransformer):
        p = torch.tensor([[10]])  # the baseline needs one token to condition on: start after a newline
    return sample_batch(model, cfg, p, new_tokens=new_tokens, seed=seed)[0].numpy().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def generative_perplexity(teacher: CausalTransformer, prompts: torch.Tensor, continuations: torch.Tensor) -> float:
    """exp of the teacher's mean negative log-likelihood (nats per byte) of the continuation tokens given their
    prompts; perplexity per byte."""
    teacher.eval()
    seq = torch.cat([prompts, continuations], dim=1)
    logits = teacher(seq[:, :-1])[:, prompts.shape[1] - 1 :]
    nll = F.cross_entropy(logits.transpose(1, 2), continuations, reduction="mean")
    return float(nll.exp())


@torch.no_grad()
def teacher_features(teacher: CausalTransformer, prompts: torch.Tensor, continuations: torch.Tensor) -> np.ndarray:
    """MAUVE features [N, width]: the teacher's final normalised hidden states, averaged over the continuation."""
    teacher.eval()
    h = teacher.hidden(torch.cat([prompts, continuations], dim=1))
    return h[:, prompts.shape[1] :].mean(1).double().numpy()


def mauve_score(p_feats: np.ndarray, q_feats: np.ndarray, *, seed: int = 0, scaling: float = 5.0) -> float:
    """MAUVE (Pillutla et al. 2021) between two samples of features, in (0, 1], 1 = same distribution.

    Joint PCA keeping 90 % of the variance, KMeans (n_clusters = max(2, min(n_p, n_q) / 10)) on both, cluster
    histograms P and Q; for lambda in 25 points of (0, 1), R = lambda P + (1 - lambda) Q and the point
    (exp(-c KL(Q||R)), exp(-c KL(P||R))); MAUVE is the area under that divergence curve (with (0, 1), (1, 0))."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = np.concatenate([p_feats, q_feats])
    x = PCA(n_components=0.9, svd_solver="full", random_state=seed).fit_transform(x)
    k = max(2, int(round(min(len(p_feats), len(q_feats)) / 10)))
    labels = KMeans(n_clusters=k, n_init=5, max_iter=500, random_state=seed).fit_predict(x)
    p = np.bincount(labels[: len(p_feats)], minlength=k) / len(p_feats)
    q = np.bincount(labels[len(p_feats) :], minlength=k) / len(q_feats)

    def kl(a: np.ndarray, r: np.ndarray) -> float:
        m = a > 0
        return float(np.sum(a[m] * np.log(a[m] / r[m])))

    pts = [(0.0, 1.0)]
    for lam in np.linspace(1e-6, 1 - 1e-6, 25):
        r = lam * p + (1 - lam) * q
        pts.append((math.exp(-scaling * kl(q, r)), math.exp(-scaling * kl(p, r))))
    pts.append((1.0, 0.0))
    xs, ys = np.array(pts).T
    order = np.argsort(xs)
    return float(np.trapezoid(ys[order], xs[order]))


def eval_prompts(
    stream: TokenStream, prompt_len: int, continuation_len: int, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompts [n, P], reference continuations [n, C]) from the first n fixed windows of a held-out split."""
    w = stream.windows(prompt_len + continuation_len, n)
    return w[:, :prompt_len], w[:, prompt_len:]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    cfg: Config,
    stream: TokenStream,
    *,
    seed: int,
    max_windows: int = 64,
    teacher: CausalTransformer | None = None,
    continuation_len: int | None = None,
) -> dict[str, float]:
    """Metrics on held-out windows. The baseline: next-token bits per byte ("bpc"). DiffusionBlocks (which has no
    exact likelihood): each block's denoising cross-entropy in bits at sigma drawn from its own interval
    ("denoise_bits_block{b}"). With a teacher, for both: generative perplexity of continuations of half-window
    prompts ("gen_ppl"), the same for the held-out continuations ("ref_ppl"), and MAUVE between generated and
    held-out continuations on the teacher's features ("mauve")."""
    model.eval()
    windows = stream.windows(cfg.seq_len, max_windows)
    out: dict[str, float] = {}
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, CausalTransformer):
        out["bpc"] = float(next_token_loss(model, windows).mean()) / math.log(2)
    elif isinstance(model, ARDiffusionBlocks):
        for b, block in enumerate(model.blocks):
            bits = block_loss(block, b, windows, g).mean() / math.log(2)  # type: ignore[arg-type]
            out[f"denoise_bits_block{b}"] = float(bits)
    if teacher is not None:
        c = continuation_len or cfg.seq_len // 2
        prompts, refs = eval_prompts(stream, cfg.seq_len - c, c, max_windows)
        gen = sample_batch(model, cfg, prompts, new_tokens=c, seed=seed)
        out["gen_ppl"] = generative_perplexity(teacher, prompts, gen)
        out["ref_ppl"] = generative_perplexity(teacher, prompts, refs)
        out["mauve"] = mauve_score(teacher_features(teacher, prompts, gen), teacher_features(teacher, prompts, refs))
    return out
