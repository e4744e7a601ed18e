"""Block architectures: transformer denoisers that own everything they need.

Every block is a self-contained `nn.Module` (its own input embeddings, noise embedding, layers and head)
built from an `ArchConfig`, so training block i needs no other block in memory. All parameters live in
`nn.Linear` and `nn.Embedding` modules (learned positions are embeddings of position ids, attention is
q/k/v/o Linear + scaled_dot_product_attention), which keeps every block compatible with Opacus per-sample
gradients, ghost clipping included.

Three block kinds:
  * `DenoisingClassifier` (ViT-style image or feature-tokenizer tabular input): the diffusion target is the
    class embedding E[y]; the noisy target enters as an extra token, the input is clean conditioning.
  * `DenoisingGenerator` (DiT-style, AdaLN-Zero): the target is the image itself, conditioned on a label.
  * `TransformerClassifier`: the end-to-end baseline with the same tokenizer, layers, width and head.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .schedule import NoiseSchedule


@dataclass(frozen=True)
class ArchConfig:
    """Architecture of one block (or of the end-to-end baseline, with depth = all layers).

    kind: "classifier" (denoises a class embedding) or "generator" (denoises an image).
    input: "image" (C x H x W, split into patch tokens) or "tabular" (one token per feature).
    label_scale: L2 norm of each class-embedding row (classifier target); the rows are fixed, seeded
    random directions shared by every block.
    """

    kind: Literal["classifier", "generator"]
    input: Literal["image", "tabular"]
    num_classes: int
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    image_channels: int = 1
    image_size: int = 8
    patch_size: int = 2
    num_features: int = 0
    label_scale: float = 1.0
    embedding_seed: int = 0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.input == "image" and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.input == "tabular" and self.num_features < 1:
            raise ValueError("a tabular block needs num_features >= 1")
        if self.kind == "generator" and self.input != "image":
            raise ValueError("generator blocks take image input")

    @property
    def num_tokens(self) -> int:
        if self.input == "image":
            return (self.image_size // self.patch_size) ** 2
        return self.num_features

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArchConfig:
        return cls(**d)

    def with_depth(self, depth: int) -> ArchConfig:
        return replace(self, depth=depth)


# ---------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o Linear layers (Opacus-friendly)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """The attention-weighted values [B, T, width], before the output projection `o`."""
        b, t, d = h.shape
        split = lambda x: x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        return a.transpose(1, 2).reshape(b, t, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.o(self.mix(h))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float) -> None:
        super().__init__()
        hidden = int(width * ratio)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        """GELU(fc1 h), the input of fc2."""
        return F.gelu(self.fc1(h))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(h))


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# Memory-lean AdaLN-Zero. Written with plain autograd, h += gate * Attn(LN(h) (1 + scale) + shift) saves, per
# sub-layer, two [B, T, width] tensors a plain pre-LN layer does not: LN(h) (kept by the product with 1 + scale)
# and the sub-layer's output (kept by the product with the gate). The two functions below compute the same
# values and the same gradients bit for bit, but recompute those two tensors in backward from what is saved
# anyway (h with its LN statistics; the input of the last Linear, which that Linear saves), so a block layer
# holds as many activations as a plain layer and a block's training memory is ~1/B of the end-to-end model's.
class _ModulatedNorm(torch.autograd.Function):
    """y = LN(h) (1 + scale) + shift, LN without affine over the last dim; saves h, its mean and 1/std."""

    @staticmethod
    def forward(ctx, h, shift, scale, eps: float):
        xhat, mean, rstd = torch.ops.aten.native_layer_norm(h, [h.shape[-1]], None, None, eps)
        ctx.eps = eps
        ctx.save_for_backward(h, mean, rstd, scale)
        return xhat * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        h, mean, rstd, scale = ctx.saved_tensors
        xhat = torch.ops.aten.native_layer_norm(h, [h.shape[-1]], None, None, ctx.eps)[0]
        grad_xhat = grad * (1 + scale.unsqueeze(1))
        grad_h = torch.ops.aten.native_layer_norm_backward(
            grad_xhat, h, [h.shape[-1]], mean, rstd, None, None, [True, False, False]
        )[0]
        return grad_h, grad.sum(1), (grad * xhat).sum(1), None


class _GatedResidual(torch.autograd.Function):
    """out = h + gate * y with y = x W^T + b; saves x (already kept by the Linear that made y), not y, and
    recomputes y for the gate's gradient. W and b only recompute y: their gradients flow through y's Linear
    (so Opacus sees that Linear's activations and backprops as usual)."""

    @staticmethod
    def forward(ctx, h, gate, y, x, weight, bias):
        ctx.save_for_backward(gate, x, weight, bias)
        return h + gate.unsqueeze(1) * y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        gate, x, weight, bias = ctx.saved_tensors
        y = F.linear(x, weight, bias)
        return grad, (grad * y).sum(1), grad * gate.unsqueeze(1), None, None, None


_twice = threading.local()


@contextlib.contextmanager
def twice_differentiable():
    """Inside this block AdaLN layers use plain autograd (more memory), so that gradients can themselves be
    differentiated (`create_graph=True`, e.g. gradient-matching inversion in privacy audits). Same values."""
    before = getattr(_twice, "on", False)
    _twice.on = True
    try:
        yield
    finally:
        _twice.on = before


def modulated_norm(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """LN(h) (1 + scale) + shift, LN without affine; saves only h and its statistics."""
    if getattr(_twice, "on", False):
        return modulate(F.layer_norm(h, h.shape[-1:], eps=eps), shift, scale)
    return _ModulatedNorm.apply(h, shift, scale, eps)


def gated_residual(h: torch.Tensor, gate: torch.Tensor, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """h + gate[:, None] * linear(x), with the memory of h + linear(x)."""
    if getattr(_twice, "on", False):
        return h + gate.unsqueeze(1) * linear(x)
    return _GatedResidual.apply(h, gate, linear(x), x, linear.weight, linear.bias)


class AdaLNLayer(nn.Module):
    """Transformer layer with AdaLN-Zero conditioning on c [B, width]:
    h += gate1 * Attn(LN(h) (1 + scale1) + shift1); h += gate2 * MLP(LN(h) (1 + scale2) + shift2).
    The modulation is zero-initialised, so a fresh layer is the identity. LN has no affine parameters
    (eps 1e-6); the modulation and gating run through the memory-lean functions above."""

    eps = 1e-6

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.mlp = MLP(width, mlp_ratio)
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        h = gated_residual(h, g1, self.attn.o, self.attn.mix(modulated_norm(h, sh1, sc1, self.eps)))
        return gated_residual(h, g2, self.mlp.fc2, self.mlp.hidden(modulated_norm(h, sh2, sc2, self.eps)))


class PlainLayer(nn.Module):
    """Pre-LN transformer layer (the end-to-end baseline): h += Attn(LN(h)); h += MLP(LN(h))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn, self.mlp = SelfAttention(width, heads), MLP(width, mlp_ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class NoiseEmbedding(nn.Module):
    """c_noise = ln(sigma)/4 -> fixed sinusoidal features -> Linear-SiLU-Linear -> [B, width]."""

    freqs: torch.Tensor  # buffer

    def __init__(self, width: int, num_freqs: int = 32) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(-math.log(1e3) * torch.arange(num_freqs) / num_freqs) * 4)
        self.fc1, self.fc2 = nn.Linear(2 * num_freqs, width), nn.Linear(width, width)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = c_noise.float().unsqueeze(-1) * self.freqs
        return self.fc2(F.silu(self.fc1(torch.cat([a.cos(), a.sin()], dim=-1))))


class PatchTokenizer(nn.Module):
    """[B, C, H, W] -> [B, T, width]: non-overlapping p x p patches, Linear, plus learned positions."""

    pos_ids: torch.Tensor  # buffer (not persistent)

    def __init__(self, channels: int, size: int, patch: int, width: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(channels * patch * patch, width)
        self.pos = nn.Embedding((size // patch) ** 2, width)
        self.register_buffer("pos_ids", torch.arange((size // patch) ** 2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, self.patch)) + self.pos(self.pos_ids.expand(x.shape[0], -1).contiguous())


class FeatureTokenizer(nn.Module):
    """[B, F] -> [B, F, width]: token_j = x_j * W_j + b_j (FT-Transformer), W and b as embeddings of the
    feature ids so that Opacus computes their per-sample gradients (ghost clipping included)."""

    ids: torch.Tensor  # buffer (not persistent)

    def __init__(self, num_features: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Embedding(num_features, width)
        self.bias = nn.Embedding(num_features, width)
        nn.init.normal_(self.weight.weight, std=1 / math.sqrt(width))
        nn.init.zeros_(self.bias.weight)
        self.register_buffer("ids", torch.arange(num_features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.ids.expand(x.shape[0], -1).contiguous()
        return x.unsqueeze(-1) * self.weight(ids) + self.bias(ids)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C p p]."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(t: torch.Tensor, p: int, c: int, size: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    b, g = t.shape[0], size // p
    return t.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, size, size)


def make_tokenizer(arch: ArchConfig) -> nn.Module:
    if arch.input == "image":
        return PatchTokenizer(arch.image_channels, arch.image_size, arch.patch_size, arch.width)
    return FeatureTokenizer(arch.num_features, arch.width)


def class_embedding(num_classes: int, width: int, scale: float, seed: int) -> torch.Tensor:
    """Fixed class-embedding table E [num_classes, width]: seeded random directions, rows of norm `scale`.
    Frozen and identical in every block: a learned shared target would couple the blocks."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(num_classes, width, generator=g, dtype=torch.float64)
    return (scale * e / e.norm(dim=1, keepdim=True)).float()


# ---------------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------------
class DenoisingClassifier(nn.Module):
    """Classification block: logits = f(x, z_sigma, sigma) for a noisy class embedding z_sigma = E[y] + sigma eps.

    Tokens: [label token = Linear(c_in z_sigma), input tokens]. AdaLN conditioning on the noise level in
    every layer. Head: u = c_out LN(h_label) + c_skip z_sigma, modulated, Linear -> logits. The denoiser
    used by the sampler is D = softmax(logits) @ E."""

    arch: ArchConfig
    schedule: NoiseSchedule
    class_emb: torch.Tensor  # buffer [num_classes, width]

    def __init__(self, arch: ArchConfig, schedule: NoiseSchedule) -> None:
        super().__init__()
        assert arch.kind == "classifier"
        self.arch, self.schedule = arch, schedule
        w = arch.width
        self.register_buffer("class_emb", class_embedding(arch.num_classes, w, arch.label_scale, arch.embedding_seed))
        self.tokenizer = make_tokenizer(arch)
        self.label_in = nn.Linear(w, w)
        self.label_pos = nn.Embedding(1, w)
        self.noise_emb = NoiseEmbedding(w)
        self.layers = nn.ModuleList(AdaLNLayer(w, arch.heads, arch.mlp_ratio) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.head_ada = nn.Linear(w, 2 * w)
        nn.init.zeros_(self.head_ada.weight)
        nn.init.zeros_(self.head_ada.bias)
        self.head = nn.Linear(w, arch.num_classes)

    def forward(self, x: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = (t.unsqueeze(-1) for t in self.schedule.precondition(sigma))
        c = self.noise_emb(c_noise.squeeze(-1))
        zero = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
        label_tok = self.label_in(c_in * z).unsqueeze(1) + self.label_pos(zero)
        h = torch.cat([label_tok, self.tokenizer(x)], dim=1)
        for layer in self.layers:
            h = layer(h, c)
        u = c_out * self.norm(h[:, 0]) + c_skip * z
        shift, scale = self.head_ada(F.silu(c)).chunk(2, dim=-1)
        return self.head(u * (1 + scale) + shift)

    def denoise(self, x: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, logits): D = softmax(logits) @ E, the posterior-mean class embedding."""
        logits = self(x, z, sigma)
        return logits.softmax(-1) @ self.class_emb, logits


class DenoisingGenerator(nn.Module):
    """Class-conditional image denoiser (DiT, AdaLN-Zero): D = c_skip z + c_out F(c_in z, c_noise, y).
    Label index num_classes is the null label used for classifier-free guidance."""

    arch: ArchConfig
    schedule: NoiseSchedule

    def __init__(self, arch: ArchConfig, schedule: NoiseSchedule) -> None:
        super().__init__()
        assert arch.kind == "generator"
        self.arch, self.schedule = arch, schedule
        w, p, c = arch.width, arch.patch_size, arch.image_channels
        self.tokenizer = make_tokenizer(arch)
        self.noise_emb = NoiseEmbedding(w)
        self.label_emb = nn.Embedding(arch.num_classes + 1, w)
        self.layers = nn.ModuleList(AdaLNLayer(w, arch.heads, arch.mlp_ratio) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.head_ada = nn.Linear(w, 2 * w)
        self.head = nn.Linear(w, p * p * c)
        for m in (self.head_ada, self.head):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def null_label(self) -> int:
        return self.arch.num_classes

    def forward(self, z: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Returns D(z, sigma, y), same shape as z."""
        c_skip, c_out, c_in, c_noise = (t.view(-1, 1, 1, 1) for t in self.schedule.precondition(sigma))
        c = self.noise_emb(c_noise.flatten()) + self.label_emb(y)
        h = self.tokenizer(c_in * z)
        for layer in self.layers:
            h = layer(h, c)
        shift, scale = self.head_ada(F.silu(c)).chunk(2, dim=-1)
        f = self.head(modulate(self.norm(h), shift, scale))
        f = unpatchify(f, self.arch.patch_size, self.arch.image_channels, self.arch.image_size)
        return c_skip * z + c_out * f


class TransformerClassifier(nn.Module):
    """End-to-end baseline: the same tokenizer, width and pre-LN layers, a CLS token, LN + Linear head."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        w = arch.width
        self.arch = arch
        self.tokenizer = make_tokenizer(arch)
        self.cls = nn.Embedding(1, w)
        self.layers = nn.ModuleList(PlainLayer(w, arch.heads, arch.mlp_ratio) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
        h = torch.cat([self.cls(zero), self.tokenizer(x)], dim=1)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h[:, 0]))


# A DiffusionBlocks block: what `build_block` makes (the end-to-end `TransformerClassifier` is not one).
Block = DenoisingClassifier | DenoisingGenerator


def build_block(arch: ArchConfig, schedule: NoiseSchedule) -> Block:
    """A fresh block for `arch` (classifier or generator), conditioned through `schedule`."""
    if arch.kind == "classifier":
        return DenoisingClassifier(arch, schedule)
    return DenoisingGenerator(arch, schedule)


def as_block(module: nn.Module) -> Block:
    """`module` as a DiffusionBlocks block; TypeError for anything else (e.g. the end-to-end baseline)."""
    if isinstance(module, DenoisingClassifier | DenoisingGenerator):
        return module
    raise TypeError(f"not a DiffusionBlocks block: {type(module).__name__}")


def as_classifier_block(module: nn.Module) -> DenoisingClassifier:
    """`module` as a classification block; TypeError for anything else (e.g. a generator block)."""
    if isinstance(module, DenoisingClassifier):
        return module
    raise TypeError(f"not a DiffusionBlocks classification block: {type(module).__name__}")


def as_generator_block(module: nn.Module) -> DenoisingGenerator:
    """`module` as a generator block; TypeError for anything else (e.g. a classification block)."""
    if isinstance(module, DenoisingGenerator):
        return module
    raise TypeError(f"not a DiffusionBlocks generator block: {type(module).__name__}")


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
