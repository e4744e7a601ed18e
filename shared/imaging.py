"""PNG grids of images in [-1, 1] (samples, reconstructions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_grid(x: torch.Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [rows*(H+pad), nrow*(W+pad), C] grid (row-major)."""
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    n, c, h, w = a.shape
    rows = (n + nrow - 1) // nrow
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = a[
            k
        ].transpose(1, 2, 0)
    return grid


def save_grid(x: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 4) -> None:
    """Write a PNG grid, each pixel enlarged `scale` times (small images stay visible)."""
    from PIL import Image

    g = to_grid(x, nrow)
    img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
