"""Named task presets: a dataset, its fixed train/test split, an architecture and training settings.

A preset answers "what does `dblocks train --data mnist` build?" in one place; every bench script and the
federation start from these and override what they vary. `total_layers` is the depth of the end-to-end
model; a DiffusionBlocks model with B blocks gives each block total_layers / B layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from .data import Dataset, FeatureStats, builtin_feature_stats, load_dataset, stratified_split
from .models import ArchConfig
from .schedule import NoiseSchedule
from .training import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    dataset: str
    kind: str  # "classifier" | "generator"
    test_size: int | float
    total_layers: int
    arch: ArchConfig
    train: TrainConfig
    image_size: int | None = None
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)

    def block_arch(self, num_blocks: int) -> ArchConfig:
        if self.total_layers % num_blocks:
            raise ValueError(f"{self.total_layers} layers cannot be split into {num_blocks} equal blocks")
        return self.arch.with_depth(self.total_layers // num_blocks)

    def noise_schedule(self, num_blocks: int, **overrides) -> NoiseSchedule:
        return replace(self.schedule, num_blocks=num_blocks, **overrides)

    def feature_stats(self) -> FeatureStats | None:
        """The public statistics this task's tabular features are standardised with (None for images): what the
        server publishes with the task, so that a company standardises its raw records the same way without
        using their own statistics (`load_dataset(path, stats=preset.feature_stats())`)."""
        return builtin_feature_stats(self.dataset)

    def load_split(self, seed: int = 0) -> tuple[Dataset, Dataset]:
        """The fixed stratified train/test split of this preset's dataset (split seed 0 unless told)."""
        return stratified_split(load_dataset(self.dataset, image_size=self.image_size), self.test_size, seed=seed)


def _image_arch(
    kind: Literal["classifier", "generator"], size: int, patch: int, width: int, heads: int = 4, channels: int = 1
) -> ArchConfig:
    return ArchConfig(
        kind=kind,
        input="image",
        num_classes=10,
        width=width,
        heads=heads,
        image_size=size,
        patch_size=patch,
        image_channels=channels,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "digits",
            "digits",
            "classifier",
            0.25,
            8,
            _image_arch("classifier", 8, 2, 64),
            TrainConfig(epochs=40, batch_size=64, lr=1e-3),
        ),
        Preset(
            "mnist",
            "mnist",
            "classifier",
            1000,
            8,
            _image_arch("classifier", 28, 4, 64),
            TrainConfig(epochs=30, batch_size=64, lr=1e-3),
        ),
        Preset(
            "breast_cancer",
            "breast_cancer",
            "classifier",
            0.25,
            4,
            ArchConfig(kind="classifier", input="tabular", num_classes=2, width=32, heads=4, num_features=30),
            TrainConfig(epochs=60, batch_size=32, lr=1e-3),
        ),
        # federated MNIST: 7x7 patches (16 tokens) and width 32 keep DP-SGD cheap for a company's CPU and the
        # update small (DP noise grows with the parameter count); 12 layers, so that at B = 4 a block has 3 layers
        # (as the paper splits 12) and its layers, not its embeddings and head, dominate the client's memory
        # (bench/federated.py: 1 layer per block left the block at 0.42 of the whole model's peak memory)
        Preset(
            "mnist-fed",
            "mnist",
            "classifier",
            1000,
            12,
            _image_arch("classifier", 28, 7, 32),
            TrainConfig(epochs=20, batch_size=64, lr=1e-3),
        ),
        # measured in bench/generation.py: width 64 with 2x the updates (batch 32, lr 1e-3) gives clean digits
        # in ~12 min per model on one core; width 96, batch 64, lr 5e-4 left speckled strokes at 30 epochs
        Preset(
            "mnist-gen",
            "mnist",
            "generator",
            1000,
            8,
            _image_arch("generator", 14, 2, 64),
            TrainConfig(epochs=30, batch_size=32, lr=1e-3),
            image_size=14,
        ),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def digits_as_mnist() -> Dataset:
    """The operator's public stand-in for MNIST in the *shift* scenario (bench/dp_adapt.py, `dbserver demo`):
    sklearn's digits (UCI optdigits: 1797 scans of 43 writers, 8x8 pixels of 4 bits) brought to MNIST's format
    the way MNIST itself was made -- the digit (its 8x8 box) upsampled bilinearly to 20x20 and centred in a
    28x28 frame of background (-1). Same classes and layout as the companies' MNIST images, another source:
    coarser pixels, other writers, other strokes. Fixed: no seed, nothing downloaded."""
    import torch

    d = load_dataset("digits")
    x = torch.nn.functional.interpolate(d.x, size=(20, 20), mode="bilinear", align_corners=False).clamp(-1, 1)
    x = torch.nn.functional.pad(x, (4, 4, 4, 4), value=-1.0)
    return Dataset(
        x,
        d.y.clone(),
        "image",
        10,
        "digits-as-mnist",
        [str(i) for i in range(10)],
        "sklearn digits x/8 - 1, bilinear 8x8 -> 20x20, centred in 28x28 with -1",
    )
