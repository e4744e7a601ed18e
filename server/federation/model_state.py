"""The global model the server owns: B blocks, the round each last changed in, and their lineage.

Every new block version is written (1) to the registry, idempotently keyed by (run, block, round), and
(2) to the local checkpoint directory (a regular model directory plus `rounds.json`). On restart the server
takes each block from its latest registered version (or the checkpoint when it runs without a registry),
so a crash mid-round loses nothing and counts nothing twice: a block that already has round r is not
trained in round r again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dblocks.shared.models import build_block
from dblocks.shared.presets import Preset
from dblocks.shared.schedule import NoiseSchedule
from dblocks.shared.wire import BlockSpec, ModelManifest, load_block, pack_block, save_block, unpack_block


@dataclass
class BlockState:
    module: nn.Module
    spec: BlockSpec
    weights: bytes
    round: int = 0  # last round that produced this version (0: initial)
    version_id: str | None = None  # registry id of this version
    releases: int = 0  # aggregated (client-level) releases so far


@dataclass
class GlobalModel:
    task: str
    schedule: NoiseSchedule
    blocks: list[BlockState] = field(default_factory=list)
    checkpoint_dir: Path | None = None

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def initial(
        cls, preset: Preset, schedule: NoiseSchedule, seed: int, init_model_dir: str | None = None
    ) -> GlobalModel:
        """Fresh blocks (seeded) or blocks pretrained elsewhere (e.g. on public data)."""
        arch = preset.block_arch(schedule.num_blocks)
        blocks = []
        for i in range(schedule.num_blocks):
            if init_model_dir:
                spec, module = load_block(init_model_dir, i)
                if spec.noise_schedule != schedule or spec.arch_config != arch:
                    raise ValueError(f"{init_model_dir} block {i} has another schedule or architecture than this run")
            else:
                torch.manual_seed(seed * 1000 + i)
                module = build_block(arch, schedule)
            spec, data = pack_block(preset.name, schedule, i, module)
            blocks.append(BlockState(module, spec, data))
        return cls(preset.name, schedule, blocks)

    def resume_from_checkpoint(self, directory: Path) -> None:
        """Replace blocks by the checkpoint's where it has them (used without a registry)."""
        rounds_file = directory / "rounds.json"
        if not rounds_file.exists():
            return
        rounds = json.loads(rounds_file.read_text())
        for i, b in enumerate(self.blocks):
            if str(i) in rounds:
                spec, module = load_block(directory, i)
                b.module, b.spec, b.round = module, spec, rounds[str(i)]["round"]
                b.releases = rounds[str(i)].get("releases", 0)
                b.weights = (directory / f"block-{i}.safetensors").read_bytes()

    def resume_from_registry(self, registry, run_id: int) -> None:
        for i, b in enumerate(self.blocks):
            v = registry.latest_block_version(run_id, i)
            if v is None:
                continue
            data = registry.download_weights(v["id"])
            spec = BlockSpec.from_json(v["spec_json"])
            b.module, b.spec, b.weights = unpack_block(spec, data), spec, data
            b.round, b.version_id = v["round"], v["id"]
            b.releases = v.get("metrics", {}).get("releases", b.round)

    # ---- updates --------------------------------------------------------------------------------
    def weights_arrays(self, i: int) -> list[np.ndarray]:
        return [v.detach().numpy().astype(np.float32) for v in self.blocks[i].module.state_dict().values()]

    def param_shapes(self, i: int) -> list[tuple[int, ...]]:
        return [tuple(p.shape) for p in self.blocks[i].module.parameters()]

    def apply_update(self, i: int, delta: list[np.ndarray], server_lr: float, round: int) -> BlockState:
        """theta_i <- theta_i + server_lr * delta (delta: the noised mean of the cohort's clipped deltas)."""
        b = self.blocks[i]
        with torch.no_grad():
            for p, d in zip(b.module.parameters(), delta):
                p.add_(torch.from_numpy(np.asarray(d, dtype=np.float32)), alpha=server_lr)
        b.spec, b.weights = pack_block(self.task, self.schedule, i, b.module)
        b.round, b.releases = round, b.releases + 1
        return b

    def save_checkpoint(self, i: int) -> None:
        if self.checkpoint_dir is None:
            return
        d = self.checkpoint_dir
        b = self.blocks[i]
        save_block(d, b.spec, b.weights)
        rounds_file = d / "rounds.json"
        rounds = json.loads(rounds_file.read_text()) if rounds_file.exists() else {}
        rounds[str(i)] = {"round": b.round, "releases": b.releases, "version_id": b.version_id, "sha256": b.spec.sha256}
        tmp = rounds_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(rounds, indent=1))
        os.replace(tmp, rounds_file)

    def write_manifest(self, preset: Preset, extra: dict | None = None) -> None:
        if self.checkpoint_dir is None:
            return
        ModelManifest(
            task=self.task,
            kind=preset.kind,
            schedule=self.schedule.to_dict(),
            arch=self.blocks[0].spec.arch,
            metrics=extra or {},
        ).save(self.checkpoint_dir)


def momentum_step(velocity: dict, i: int, release: list[np.ndarray], beta: float) -> list[np.ndarray]:
    """Server momentum (heavy ball) for block i: v_i <- beta v_i + release; the step to apply is v_i. Only the
    released (securely aggregated, clipped, noised) means enter: post-processing, no privacy cost. `velocity`
    holds v per block between rounds (in memory; a restarted server starts again from v = 0)."""
    prev = velocity.get(i)
    v = [
        np.asarray(d, dtype=np.float64) + (beta * p if prev is not None else 0.0)
        for d, p in zip(release, prev or [None] * len(release))
    ]
    velocity[i] = v
    return [a.astype(np.float32) for a in v]
