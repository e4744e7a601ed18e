"""The frozen feature network of the generation benchmark: a small CNN trained on the MNIST 5k train split
at 14x14, whose 128-d penultimate layer is the feature space of the Frechet distance and KID, and whose
argmax judges whether a sample shows the requested class.

Trained once, deterministically (seed 0, one thread), saved as safetensors next to the results; later runs
load that file and check its sha256, so every number in generation.json is measured with the same network.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy import linalg
from torch import nn


class FeatureCNN(nn.Module):
    """[N, 1, 14, 14] in [-1, 1] -> 128-d features (pre-activation of the penultimate layer) and 10 logits."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)  # 7x7
        self.c3 = nn.Conv2d(64, 64, 3, stride=2, padding=1)  # 4x4
        self.fc = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.out = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c1(x))
        h = F.relu(self.c2(h))
        h = F.relu(self.c3(h))
        return self.fc(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.features(x)))


def train_feature_cnn(x: torch.Tensor, y: torch.Tensor, epochs: int = 24, seed: int = 0) -> FeatureCNN:
    """Adam 1e-3 with cosine decay, batch 64, small random shifts (+-1 pixel) as augmentation."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = FeatureCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = epochs * math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
            xb = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_or_train(path: Path, x: torch.Tensor, y: torch.Tensor) -> tuple[FeatureCNN, str, bool]:
    """(frozen net, sha256 of its weights file, whether it was trained now)."""
    net, trained = FeatureCNN(), False
    if path.exists():
        net.load_state_dict(load_file(str(path)))
    else:
        net = train_feature_cnn(x, y)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
        trained = True
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), file_sha256(path), trained


@torch.no_grad()
def embed(net: FeatureCNN, x: torch.Tensor, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 [N, 128], predicted class [N])."""
    feats, preds = [], []
    for i in range(0, len(x), batch):
        f = net.features(x[i : i + batch])
        feats.append(f.double().numpy())
        preds.append(net.out(F.relu(f)).argmax(-1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


class Standardizer:
    """Per-dimension (x - mean) / std with the statistics of a reference feature set."""

    def __init__(self, ref: np.ndarray) -> None:
        self.mean, self.std = ref.mean(0), ref.std(0) + 1e-8

    def __call__(self, f: np.ndarray) -> np.ndarray:
        return (f - self.mean) / self.std


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between Gaussians fitted to two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(ca @ cb, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 50, size: int = 500, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the cubic polynomial kernel k(u, v) = (u.v / d + 1)^3, averaged over random
    subsets of `size` from each set. Returns (mean, std over subsets)."""
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    m = min(size, len(a), len(b))
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))
