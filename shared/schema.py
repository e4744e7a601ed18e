"""The data a model expects, fixed at training and saved with it: class list, features, preprocessing.

`DataSchema` is stored in model.json (`dataset.schema`). Eval and predict read every file through it, so a file
is encoded the way the training file was: labels matched to the saved class list by name (a label not in it is an
error, a subset of the classes a note), tabular columns selected by name in the saved order, features
standardised with the training split's saved mean/std (never the new file's own), images converted to the saved
number of channels and size. Training computes the statistics on the training split only, after the held-out
split, so held-out rows never shape the preprocessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .data import BUILTIN, DataError, Dataset, FeatureStats, load_dataset


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
