"""Block updates: the format the federation produces, and local producers so audits run without it.

A client's update is the delta (trained minus received weights) of the block's state dict, float32. The
client-level clip scales the whole delta (all tensors together) to L2 norm <= C. A file holds the delta dict
as safetensors plus a JSON sidecar (`<file>.json`) with `UpdateMeta`.

Releases (what leaves the secure aggregation), with K clients and central noise multiplier z:
    aggregate = sum_k clip_C(u_k)                         (reduction "sum", norm <= K C)
    release   = (sum_k clip_C(u_k) + N(0, (z C)^2 I)) / K (reduction "mean", noise std z C / K per coordinate)
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..mechanisms import central_noise_std, clip_factor, sum_noise_std

Delta = dict[str, torch.Tensor]
OBSERVATIONS: tuple[str, ...] = ("raw", "clipped", "aggregate", "release", "weights", "sequence")
UPDATE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class UpdateMeta:
    """Sidecar of an update file.

    block_index, noise_interval: the block and the (lo, hi) sigma interval it trains on.
    observation: what the tensors are (raw local delta, clipped delta, SecAgg sum, noised release).
    clip_norm: client-level L2 clip C (None: not clipped). clients_aggregated: K.
    reduction: "sum" (SecAgg aggregate) or "mean" (release = sum / K).
    noise_multiplier: central noise z (noise std z C on the sum). central_noise_std: per-coordinate std of the
    noise in the stored tensors (z C / K for a mean, z C for a sum).
    dp: record-level DP-SGD settings and accountant report of the local training ({} if none).
    local: the client's local training (optimizer, lr, steps, records).
    """

    block_index: int
    noise_interval: tuple[float, float]
    observation: str
    clip_norm: float | None = None
    clients_aggregated: int = 1
    reduction: Literal["sum", "mean"] = "sum"
    noise_multiplier: float = 0.0
    central_noise_std: float = 0.0
    round: int | None = None
    task: str = ""
    base_sha256: str = ""
    dp: dict = field(default_factory=dict)
    local: dict = field(default_factory=dict)
    format_version: int = UPDATE_FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UpdateMeta:
        if d.get("format_version") != UPDATE_FORMAT_VERSION:
            raise ValueError(f"update sidecar format {d.get('format_version')!r} is not {UPDATE_FORMAT_VERSION}")
        d = dict(d)
        d["noise_interval"] = tuple(d["noise_interval"])
        return cls(**d)


@dataclass
class BlockUpdate:
    delta: Delta
    meta: UpdateMeta

    def norm(self) -> float:
        return float(flatten(self.delta).norm())


# ---------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------
def sidecar_path(path: str | Path) -> Path:
    return Path(str(path) + ".json")


def save_update(path: str | Path, update: BlockUpdate) -> None:
    """Write `path` (safetensors of the delta) and `path.json` (the sidecar)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in update.delta.items()}, str(path))
    sidecar_path(path).write_text(json.dumps(update.meta.to_dict(), indent=2, sort_keys=True))


def load_update(path: str | Path) -> BlockUpdate:
    path = Path(path)
    side = sidecar_path(path)
    for p in (path, side):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing (an update is <file>.safetensors plus <file>.safetensors.json)")
    try:
        delta = load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    return BlockUpdate(delta, UpdateMeta.from_dict(json.loads(side.read_text())))


def check_update_matches(update: BlockUpdate, block: nn.Module) -> None:
    """Raise ValueError unless the delta has exactly the block's state-dict names and shapes."""
    state = block.state_dict()
    missing, extra = state.keys() - update.delta.keys(), update.delta.keys() - state.keys()
    if missing or extra:
        raise ValueError(
            f"update does not fit the block: missing {sorted(missing)[:4]}, unexpected {sorted(extra)[:4]}"
            " (was it made for another block or architecture?)"
        )
    for k, v in state.items():
        if update.delta[k].shape != v.shape:
            raise ValueError(
                f"update tensor {k!r} has shape {list(update.delta[k].shape)}, the block has {list(v.shape)}"
            )


# ---------------------------------------------------------------------------------------------------
# vector views
# ---------------------------------------------------------------------------------------------------
def flatten(delta: Delta, keys: list[str] | None = None) -> torch.Tensor:
    keys = sorted(delta) if keys is None else keys
    return torch.cat([delta[k].detach().float().flatten() for k in keys])


def parameter_keys(block: nn.Module) -> list[str]:
    """State-dict names that are trainable parameters (buffers such as the class embedding never train)."""
    return sorted(n for n, _ in block.named_parameters())


# ---------------------------------------------------------------------------------------------------
# producing updates locally
# ---------------------------------------------------------------------------------------------------
def weight_delta(trained: nn.Module, received: dict[str, torch.Tensor]) -> Delta:
    """trained - received, over the whole state dict, float32."""
    return {k: (v.detach().float() - received[k].float()).clone() for k, v in trained.state_dict().items()}


def clip_delta(delta: Delta, clip_norm: float) -> tuple[Delta, float]:
    """The federation's clip (`mechanisms.clip_factor`) on a tensor dict: the whole delta scaled to L2 norm
    <= clip_norm; returns (clipped, factor) with factor = min(1, C/||delta||) (norm taken in float32)."""
    factor = clip_factor(float(flatten(delta).norm()), clip_norm)
    return {k: v * factor for k, v in delta.items()}, factor


def aggregate(deltas: list[Delta]) -> Delta:
    """Secure-aggregation output: the sum of the (already clipped) client deltas."""
    return {k: torch.stack([d[k] for d in deltas]).sum(0) for k in deltas[0]}


def release(
    deltas: list[Delta],
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
    noise_keys: list[str] | None = None,
) -> Delta:
    """Client-level DP release: (sum_k clip_C(u_k) + N(0, (z C)^2 I)) / K, noise on `noise_keys` (default all).

    The federation's mechanism (`dblocks.privacy.mechanisms`) on tensor dicts with a torch generator, the noise
    drawn on the sum (`sum_noise_std`), which is noise z C / K on the mean. The K clients are the ones actually
    aggregated, so the noise is sized on them."""
    k = len(deltas)
    total = aggregate([clip_delta(d, clip_norm)[0] for d in deltas])
    keys = sorted(total) if noise_keys is None else noise_keys
    std = sum_noise_std(noise_multiplier, clip_norm)
    for name in keys:
        total[name] = total[name] + std * torch.randn(total[name].shape, generator=generator)
    return {name: v / k for name, v in total.items()}


def release_meta(base: UpdateMeta, clip_norm: float, clients: int, noise_multiplier: float) -> UpdateMeta:
    return replace(
        base,
        observation="release",
        clip_norm=clip_norm,
        clients_aggregated=clients,
        reduction="mean",
        noise_multiplier=noise_multiplier,
        central_noise_std=central_noise_std(noise_multiplier, clip_norm, clients),
    )


def dp_local_update(
    block: nn.Module, block_index: int, x: torch.Tensor, y: torch.Tensor, cfg, dp, clip_norm: float | None = None
) -> tuple[Delta, dict]:
    """A client's local update as the federation's client makes it: record-level DP-SGD (`train_block_dp`) from
    the received `block` (left untouched), delta = trained - received, then the client-level clip C when given.
    Returns (delta, DPReport dict)."""
    from dblocks.privacy.dpsgd import train_block_dp

    received = {k: v.detach().clone() for k, v in block.state_dict().items()}
    local = copy.deepcopy(block)
    report = train_block_dp(local, block_index, x, y, cfg, dp)
    delta = weight_delta(local, received)
    return (clip_delta(delta, clip_norm)[0] if clip_norm is not None else delta), report.to_dict()
