"""Transformer pieces the text families share, built from nn.Linear / nn.LayerNorm and an explicit attention mask
(so Opacus' per-example gradients work): the causal mask, masked multi-head attention, the MLP and the pre-LN layer.

Shapes: h [batch, tokens, width]; a mask is [tokens, tokens] bool, True where query i may attend key j.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(t: int, device: torch.device | None = None) -> torch.Tensor:
    """[t, t] bool, True where query i may attend key j: j <= i."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


class MaskedAttention(nn.Module):
    """Multi-head attention with separate q/k/v/o Linear layers and an explicit boolean mask."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        split = lambda x: x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)), attn_mask=mask)
        return self.o(a.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """fc2(GELU(fc1 h)), hidden width int(width * ratio)."""

    def __init__(self, width: int, ratio: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, int(width * ratio)), nn.Linear(int(width * ratio), width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(h)))


class PreLNLayer(nn.Module):
    """Pre-LN transformer layer: h += Attn(LN h, mask); h += MLP(LN h)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn, self.mlp = MaskedAttention(width, heads), FeedForward(width, mlp_ratio)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h), mask)
        return h + self.mlp(self.norm2(h))
