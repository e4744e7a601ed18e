"""Local (non-federated) training and evaluation of whole models, written as model directories.

DiffusionBlocks: blocks are trained one at a time, each built, trained, packed and released before the next
is built, so at most one block is ever in memory. End-to-end classifier: the `TransformerClassifier`
baseline. End-to-end generator: a single block (B = 1) holding all layers over the whole noise range, i.e.
the same DiT trained with ordinary backprop.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .data import DataError, Dataset
from .models import ArchConfig, TransformerClassifier, build_block
from .presets import Preset
from .sampler import classify
from .schedule import NoiseSchedule
from .schema import DataSchema
from .training import TrainConfig, train_block, train_end_to_end_classifier
from .wire import ModelManifest, check_state, load_blocks, pack_block, save_block

BlockProgress = Callable[[int, int, int, float], None]  # (block, step, total_steps, loss)


def train_diffusion_blocks(
    preset: Preset,
    schedule: NoiseSchedule,
    train: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    blocks: list[int] | None = None,
    progress: BlockProgress | None = None,
    schema: DataSchema | None = None,
) -> ModelManifest:
    """Train the given blocks (default: all) of a B-block model one after another into `out_dir`. `schema` (the
    class list and preprocessing eval/predict must apply) is saved in model.json under dataset.schema."""
    arch = preset.block_arch(schedule.num_blocks)
    manifest = ModelManifest(
        task=preset.name,
        kind=arch.kind,
        schedule=schedule.to_dict(),
        arch=arch.to_dict(),
        dataset=_dataset_record(train, schema),
        train=cfg.to_dict(),
    )
    manifest.save(out_dir)
    for i in blocks if blocks is not None else range(schedule.num_blocks):
        torch.manual_seed(cfg.seed * 1000 + i)
        block = build_block(arch, schedule)
        stats = train_block(block, i, train.x, train.y, cfg, _for_block(progress, i))
        spec, data = pack_block(preset.name, schedule, i, block)
        save_block(out_dir, spec, data)
        manifest.metrics[f"block{i}"] = stats
        manifest.save(out_dir)
        del block
        gc.collect()
    return manifest


def _for_block(progress: BlockProgress | None, i: int) -> Callable[[int, int, float], None] | None:
    """`progress` with the block index filled in (None stays None)."""
    if progress is None:
        return None
    return lambda step, total, loss: progress(i, step, total, loss)


def _dataset_record(train: Dataset, schema: DataSchema | None) -> dict:
    d = train.describe()
    if schema is not None:
        d["schema"] = schema.to_dict()
    return d


def train_end_to_end(
    preset: Preset,
    train: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    progress: BlockProgress | None = None,
    schema: DataSchema | None = None,
) -> ModelManifest:
    """The baseline with all `preset.total_layers` layers, trained with ordinary backprop."""
    if preset.kind == "generator":
        return train_diffusion_blocks(
            preset, preset.noise_schedule(1), train, cfg, out_dir, progress=progress, schema=schema
        )
    arch = preset.arch.with_depth(preset.total_layers)
    torch.manual_seed(cfg.seed * 1000)
    model = TransformerClassifier(arch)
    stats = train_end_to_end_classifier(
        model, train.x, train.y, cfg, (lambda s, t, loss: progress(0, s, t, loss)) if progress else None
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(out_dir) / "model.safetensors"))
    manifest = ModelManifest(
        task=preset.name,
        kind="end-to-end",
        schedule={},
        arch=arch.to_dict(),
        dataset=_dataset_record(train, schema),
        train=cfg.to_dict(),
        metrics={"train": stats},
    )
    manifest.save(out_dir)
    return manifest


def load_end_to_end(model_dir: str | Path) -> TransformerClassifier:
    m = ModelManifest.load(model_dir)
    model = TransformerClassifier(ArchConfig.from_dict(m.arch))
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    check_state(model.state_dict(), state, f"{model_dir}/model.safetensors")
    model.load_state_dict(state)
    return model.eval()


def default_grid(schedule: NoiseSchedule, steps_per_block: int = 1) -> np.ndarray:
    """The inference grid we use for classification: `steps_per_block` CDF-spaced steps in every block,
    starting where block 0 has training mass (see bench/accuracy.py for the comparison with EDM's grid)."""
    return schedule.block_grid(steps_per_block)


@torch.no_grad()
def predict_proba(
    model_dir: str | Path, x: torch.Tensor, *, steps_per_block: int = 1, batch: int = 512
) -> torch.Tensor:
    """Class probabilities [N, K] for x from a classification model directory: softmax of the end-to-end
    model's logits, or of the last DiffusionBlocks step's logits (the sampler's "last" readout)."""
    m = ModelManifest.load(model_dir)
    if m.kind == "end-to-end":
        model = load_end_to_end(model_dir)
        return torch.cat([model(x[i : i + batch]).softmax(-1) for i in range(0, len(x), batch)])
    if m.kind != "classifier":
        raise DataError(f"{model_dir} is a {m.kind} model; use `dblocks sample` for generators")
    _, blocks = load_blocks(model_dir)
    grid = default_grid(m.noise_schedule, steps_per_block)
    return torch.cat(
        [classify(blocks, m.noise_schedule, x[i : i + batch], grid).exp() for i in range(0, len(x), batch)]
    )


def predict(model_dir: str | Path, x: torch.Tensor, *, steps_per_block: int = 1, batch: int = 512) -> torch.Tensor:
    """Predicted class indices for x from a classification model directory (DiffusionBlocks or end-to-end)."""
    return predict_proba(model_dir, x, steps_per_block=steps_per_block, batch=batch).argmax(-1)


def accuracy(model_dir: str | Path, test: Dataset, **kw) -> float:
    return float((predict(model_dir, test.x, **kw) == test.y).float().mean())


def model_schema(model_dir: str | Path) -> DataSchema | None:
    """The data schema saved with a model (None for models trained before schemas were saved)."""
    d = ModelManifest.load(model_dir).dataset.get("schema")
    return DataSchema.from_dict(d) if d else None


def evaluation_report(y: torch.Tensor, pred: torch.Tensor, class_names: list[str]) -> dict:
    """Accuracy, per-class accuracy (recall: correct / examples of that class) and the confusion matrix
    (rows: true class, columns: predicted), with class names. Classes without examples get accuracy None."""
    k = len(class_names)
    conf = torch.zeros(k, k, dtype=torch.long)
    conf.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    per_class = {}
    for i, name in enumerate(class_names):
        n = int(conf[i].sum())
        per_class[name] = {"examples": n, "accuracy": round(float(conf[i, i]) / n, 4) if n else None}
    return {
        "examples": int(len(y)),
        "accuracy": round(float((pred == y).float().mean()), 4) if len(y) else None,
        "per_class": per_class,
        "confusion": {"classes": class_names, "matrix": conf.tolist()},
    }
