"""The data a model expects, fixed at training and saved with it: class list, features, preprocessing.

`DataSchema` is stored in model.json (`dataset.schema`). Eval and predict read every file through it, so a file
is encoded the way the training file was: labels matched to the saved class list by name (a label not in it is an
error, a subset of the classes a note), tabular columns selected by name in the saved order, features
standardised with the training split's saved mean/std (never the new file's own), images converted to the saved
number of channels and size. Training computes the statistics on the training split only, after the held-out
split, so held-out rows never shape the preprocessing.

A federated run has the same contract, `RunData`, fixed by the server for the whole run: the class list (declared
by the operator, else the initial model's saved schema, else the class indices "0".."K-1") and the feature
standardisation (the initial model's saved statistics, else features as stored). It travels in every `BlockTask`;
every company reads its file through it, so label index k means the same class at every company whatever subset
of the classes its file holds, in whatever order, as strings or numbers, and a label outside the list refuses the
task before any record is used.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from .data import BUILTIN, MAX_CLASSES, DataError, Dataset, FeatureStats, load_dataset


@dataclass(frozen=True)
class DataSchema:
    """kind "tabular" | "image"; input_shape [F] or [C, H, W]; class_names in index order; for tables the
    feature columns and the standardisation x' = (x - mean) / std (per feature, in the file's units); `source`
    says where the training data came from ({"data": path, "test_fraction", "split_seed"} or {"preset": name})."""

    kind: str
    input_shape: list[int]
    class_names: list[str]
    label_column: str = "label"
    feature_names: list[str] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None
    stats_source: str = ""
    image_size: int | None = None
    source: dict = field(default_factory=dict)

    @staticmethod
    def of(
        ds: Dataset,
        *,
        label_column: str = "label",
        stats: FeatureStats | None = None,
        image_size: int | None = None,
        source: dict | None = None,
    ) -> DataSchema:
        return DataSchema(
            ds.kind,
            list(ds.input_shape),
            list(ds.class_names),
            label_column,
            list(ds.feature_names),
            stats.mean.tolist() if stats is not None else None,
            stats.std.tolist() if stats is not None else None,
            stats.source if stats is not None else "",
            image_size,
            dict(source or {}),
        )

    def feature_stats(self) -> FeatureStats | None:
        if self.mean is None or self.std is None:
            return None
        import torch

        return FeatureStats(torch.tensor(self.mean), torch.tensor(self.std), self.stats_source)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> DataSchema:
        known = DataSchema.__dataclass_fields__.keys()
        return DataSchema(**{k: v for k, v in d.items() if k in known})

    def load(
        self,
        source: str | Path,
        *,
        label_column: str | None = None,
        labels: Literal["required", "optional"] = "required",
    ) -> Dataset:
        """`source` read the way the training data was (see the module docstring); a `DataError` if it cannot be."""
        channels = self.input_shape[0] if self.kind == "image" else None
        ds = load_dataset(
            source,
            label_column=label_column or self.label_column,
            image_size=self.image_size,
            stats=None,
            classes=self.class_names,
            labels=labels,
            channels=channels,
            features=self.feature_names or None if self.kind == "tabular" else None,
        )
        if ds.kind != self.kind or list(ds.input_shape) != list(self.input_shape):
            raise DataError(
                f"{ds.name}: the model takes {self.kind} input of shape {self.input_shape}, this file "
                f"gives {ds.kind} input of shape {list(ds.input_shape)}"
                + ("; pass --image-size or resize the images" if self.kind == "image" else "")
            )
        stats = self.feature_stats()
        return ds.standardize(stats) if stats is not None and str(source) not in BUILTIN else ds


def parse_class_list(text: str) -> list[str]:
    """`a,b,c` (a command line's class list) -> names; a `ValueError` unless at least two distinct names."""
    names = [c.strip() for c in text.split(",") if c.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"a class list needs at least two distinct comma-separated names, got {text[:80]!r}")
    return names


@dataclass(frozen=True)
class RunData:
    """A federated run's data contract: class names in label-index order, and the per-feature standardisation
    x' = (x - mean) / std (file units) or None (features as stored). Sent in every BlockTask as JSON text."""

    class_names: list[str]
    mean: list[float] | None = None
    std: list[float] | None = None
    stats_source: str = ""

    def __post_init__(self) -> None:
        names = self.class_names
        if not isinstance(names, list) or not all(isinstance(c, str) and c.strip() == c and c for c in names):
            raise ValueError("run data: class_names must be a list of non-empty, stripped names")
        if not 2 <= len(names) <= MAX_CLASSES or len(set(names)) != len(names):
            raise ValueError(f"run data: class_names must hold 2..{MAX_CLASSES} distinct names, got {len(names)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("run data: feature statistics need both mean and std")
        if self.mean is not None and self.std is not None:
            ok = len(self.mean) == len(self.std) > 0 and all(
                isinstance(v, int | float) and math.isfinite(v) for v in [*self.mean, *self.std]
            )
            if not ok or min(self.std) <= 0:
                raise ValueError("run data: feature statistics must be finite, of equal length, std > 0")

    @staticmethod
    def for_run(num_classes: int, declared: list[str] | None = None, init_model_dir: str | None = None) -> RunData:
        """The contract of a run whose model has `num_classes` outputs: `declared` (the operator's list), else the
        initial model's schema, else "0".."K-1"; the statistics from the initial model's schema. A `ValueError`
        when the list does not fit the model or contradicts the initial model's."""
        saved = None
        if init_model_dir:
            from .workflow import model_schema

            saved = model_schema(init_model_dir)
        names = declared or (saved.class_names if saved is not None else [str(k) for k in range(num_classes)])
        if len(names) != num_classes:
            raise ValueError(
                f"the run's class list has {len(names)} names but the task's model has {num_classes} classes: "
                f"declare exactly {num_classes} (in label-index order)"
            )
        if declared and saved is not None and list(saved.class_names) != list(declared):
            raise ValueError(
                f"the declared classes {declared[:10]} differ from the initial model's {saved.class_names[:10]} "
                f"({init_model_dir}): its label indices mean those classes"
            )
        if saved is not None and saved.mean is not None:
            return RunData(list(names), list(saved.mean), list(saved.std or []), saved.stats_source)
        return RunData(list(names))

    def task_fields(self) -> dict[str, str]:
        """What a BlockTask carries (`class_names`, `feature_stats`: JSON text)."""
        stats = (
            json.dumps({"mean": self.mean, "std": self.std, "source": self.stats_source})
            if self.mean is not None
            else ""
        )
        return {"class_names": json.dumps(self.class_names), "feature_stats": stats}

    @staticmethod
    def from_task(class_names: str, feature_stats: str) -> RunData | None:
        """The contract a BlockTask carries (None from an older server that sends none); `ValueError` if malformed."""
        if not isinstance(class_names, str) or not isinstance(feature_stats, str):
            raise ValueError("block task: class_names and feature_stats must be JSON text")
        if not class_names:
            if feature_stats:
                raise ValueError("block task: feature statistics without a class list")
            return None
        try:
            names = json.loads(class_names)
            stats = json.loads(feature_stats) if feature_stats else None
        except json.JSONDecodeError as e:
            raise ValueError(f"block task: class_names/feature_stats are not JSON ({e.msg})") from None
        if stats is not None and (not isinstance(stats, dict) or not {"mean", "std"} <= stats.keys()):
            raise ValueError("block task: feature_stats must be {mean, std, source}")
        if stats is None:
            return RunData(names)
        return RunData(names, stats["mean"], stats["std"], str(stats.get("source", "")))

    def feature_stats(self) -> FeatureStats | None:
        if self.mean is None or self.std is None:
            return None
        import torch

        return FeatureStats(
            torch.tensor(self.mean), torch.tensor(self.std), self.stats_source or "the run's statistics"
        )

    def load(self, source: str | Path, *, label_column: str = "label", image_size: int | None = None) -> Dataset:
        """A company's file read through the run's contract: labels matched to the class list by name (a label
        outside it is a `DataError` naming it), features standardised with the run's statistics if it has any."""
        return load_dataset(
            source,
            label_column=label_column,
            image_size=image_size,
            classes=self.class_names,
            stats=self.feature_stats(),
        )
