"""Block wire format, shared by server, client and registry.

A block travels as two things: a `BlockSpec` (JSON: task, block index, owned and training noise interval,
architecture, schedule, parameter count, sha256 of the weights) and its weights as safetensors bytes.
Unpacking verifies the hash first, then that every tensor has the name, shape and dtype the architecture
expects; any mismatch is a `BlockIntegrityError` that says which.

A model directory holds `model.json` (a `ModelManifest`) and, per block i, `block-i.json` +
`block-i.safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .models import ArchConfig, Block, as_block, build_block, param_count
from .schedule import NoiseSchedule

FORMAT_VERSION = 1


class BlockIntegrityError(ValueError):
    """Block bytes that do not match their spec (hash, names, shapes or dtypes)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BlockSpec:
    """Everything needed to rebuild and check one block. Intervals are (lo, hi) in sigma units."""

    task: str
    block_index: int
    num_blocks: int
    owned_interval: tuple[float, float]
    training_interval: tuple[float, float]
    arch: dict
    schedule: dict
    param_count: int
    sha256: str
    format_version: int = FORMAT_VERSION

    @classmethod
    def describe(
        cls, task: str, schedule: NoiseSchedule, arch: ArchConfig, block_index: int, weights: bytes
    ) -> BlockSpec:
        return cls(
            task=task,
            block_index=block_index,
            num_blocks=schedule.num_blocks,
            owned_interval=schedule.owned_interval(block_index),
            training_interval=schedule.training_interval(block_index),
            arch=arch.to_dict(),
            schedule=schedule.to_dict(),
            param_count=param_count(build_block(arch, schedule)),
            sha256=sha256_hex(weights),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BlockSpec:
        d = json.loads(text)
        if d.get("format_version") != FORMAT_VERSION:
            raise BlockIntegrityError(f"block spec format {d.get('format_version')} is not {FORMAT_VERSION}")
        d["owned_interval"], d["training_interval"] = tuple(d["owned_interval"]), tuple(d["training_interval"])
        return cls(**d)

    @property
    def arch_config(self) -> ArchConfig:
        return ArchConfig.from_dict(self.arch)

    @property
    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.schedule)


def pack_weights(module: nn.Module) -> bytes:
    """safetensors bytes of the module's state (parameters and persistent buffers), float32, contiguous."""
    return st_save({k: v.detach().float().contiguous().cpu() for k, v in module.state_dict().items()})


def pack_block(task: str, schedule: NoiseSchedule, block_index: int, module: nn.Module) -> tuple[BlockSpec, bytes]:
    data = pack_weights(module)
    return BlockSpec.describe(task, schedule, as_block(module).arch, block_index, data), data


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str) -> None:
    """Raise BlockIntegrityError unless `got` has exactly the names, shapes and dtypes of `expected`."""
    missing, extra = expected.keys() - got.keys(), got.keys() - expected.keys()
    if missing or extra:
        raise BlockIntegrityError(f"{what}: missing tensors {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    for k, ref in expected.items():
        if got[k].shape != ref.shape:
            raise BlockIntegrityError(
                f"{what}: tensor {k!r} has shape {list(got[k].shape)}, expected {list(ref.shape)}"
            )
        if got[k].dtype != ref.dtype:
            raise BlockIntegrityError(f"{what}: tensor {k!r} has dtype {got[k].dtype}, expected {ref.dtype}")
        if not torch.isfinite(got[k]).all():
            raise BlockIntegrityError(f"{what}: tensor {k!r} contains NaN or Inf")


def unpack_block(spec: BlockSpec, data: bytes) -> Block:
    """Rebuild a block from its spec and weight bytes, verifying hash, names, shapes and dtypes."""
    what = f"block {spec.block_index} of {spec.task!r}"
    if sha256_hex(data) != spec.sha256:
        raise BlockIntegrityError(
            f"{what}: sha256 of the weights {sha256_hex(data)[:12]}… does not match the spec's {spec.sha256[:12]}…"
        )
    try:
        state = st_load(data)
    except Exception as e:
        raise BlockIntegrityError(f"{what}: weights are not valid safetensors ({e})") from e
    module = build_block(spec.arch_config, spec.noise_schedule)
    check_state(module.state_dict(), state, what)
    module.load_state_dict(state)
    return module.eval()


def save_block(directory: str | os.PathLike, spec: BlockSpec, data: bytes) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_write(d / f"block-{spec.block_index}.safetensors", data)
    _atomic_write(d / f"block-{spec.block_index}.json", spec.to_json().encode())


def load_block(directory: str | os.PathLike, block_index: int) -> tuple[BlockSpec, Block]:
    d = Path(directory)
    spec_path, weights_path = d / f"block-{block_index}.json", d / f"block-{block_index}.safetensors"
    for p in (spec_path, weights_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: block {block_index} is missing from the model directory")
    spec = BlockSpec.from_json(spec_path.read_text())
    return spec, unpack_block(spec, weights_path.read_bytes())


@dataclass
class ModelManifest:
    """model.json: what a model directory holds and how its blocks fit together."""

    task: str
    kind: str  # "classifier" | "generator" | "end-to-end"
    schedule: dict
    arch: dict  # per-block architecture (end-to-end: the whole model)
    dataset: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        _atomic_write(Path(directory) / "model.json", json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ModelManifest:
        p = Path(directory) / "model.json"
        if not p.exists():
            raise FileNotFoundError(f"{p}: not a dblocks model directory (no model.json)")
        return cls(**json.loads(p.read_text()))

    @property
    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.schedule)

    @property
    def arch_config(self) -> ArchConfig:
        return ArchConfig.from_dict(self.arch)


def load_blocks(directory: str | os.PathLike) -> tuple[ModelManifest, list[Block]]:
    """The manifest and all B blocks of a DiffusionBlocks model directory, each verified."""
    m = ModelManifest.load(directory)
    return m, [load_block(directory, i)[1] for i in range(m.noise_schedule.num_blocks)]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
