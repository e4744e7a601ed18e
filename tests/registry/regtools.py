"""Helpers of the registry tests (fixtures live in conftest.py): real blocks, runs, DP fields."""

from __future__ import annotations

import functools
import uuid

from dblocks.server.registry.config import RegistrySettings
from dblocks.shared.registry_client import RegistryClient

TASK = "mnist"


@functools.cache
def schedule(num_blocks: int = 4):
    from dblocks.shared.schedule import NoiseSchedule

    return NoiseSchedule(num_blocks=num_blocks)


@functools.cache
def make_block(index: int, seed: int = 0, num_blocks: int = 4, task: str = TASK) -> tuple[str, bytes]:
    """(spec JSON, safetensors weights) of a real, small block; different seeds give different weights."""
    import torch

    from dblocks.shared.models import ArchConfig, build_block
    from dblocks.shared.wire import pack_block

    torch.manual_seed(seed * 1000 + index)
    arch = ArchConfig(kind="classifier", input="image", num_classes=10, width=16, depth=1, heads=2, image_size=8)
    spec, data = pack_block(task, schedule(num_blocks), index, build_block(arch, schedule(num_blocks)))
    return spec.to_json(), data


def new_run(client: RegistryClient, num_blocks: int = 4, num_rounds: int = 5, **kw) -> dict:
    args = dict(
        task=TASK,
        dataset={"name": "mnist", "n": 5000},
        num_blocks=num_blocks,
        schedule=schedule(num_blocks).to_dict(),
        secagg={"protocol": "secagg+", "threshold": 3},
        dp={"target_epsilon": 8.0, "delta": 1e-5, "clip_norm": 1.0},
        num_rounds=num_rounds,
        created_by="alice",
    )
    args.update(kw)
    return client.create_run(**args)


DP = dict(
    clip_norm=1.0,
    noise_multiplier=1.1,
    record_epsilon=1.5,
    record_delta=1e-5,
    record_sample_rate=0.01,
    record_steps=300,
    accountant="prv",
)


def settings_for(backend: str, request, directory) -> RegistrySettings:
    """Settings on a fresh SQLite file, or on a fresh PostgreSQL schema (dropped when the fixture ends)."""
    if backend == "sqlite":
        return RegistrySettings.in_directory(directory)
    pg = request.getfixturevalue("postgres")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    url = pg.create_schema(schema)
    request.addfinalizer(lambda: pg.drop_schema(schema))
    return RegistrySettings.in_directory(directory, database_url=url)
