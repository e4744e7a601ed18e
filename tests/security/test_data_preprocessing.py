"""#14.6: preprocessing of a company's data must not make one record depend on the others (it is outside the
DP-SGD accountant), and which preprocessing was used must be stated."""

import numpy as np
import pandas as pd
import pytest
import torch

from dblocks.client.join import JoinOptions, validate
from dblocks.shared.data import DataError, load_builtin, load_dataset


def _federated_load(path, tmp_path, label_column="label"):
    """The two federated entry points: `dbclient join`'s validation and the ClientApp's call."""
    opts = JoinOptions(server="127.0.0.1:9092", data=path, home=tmp_path / "home", label_column=label_column)
    joined = validate(opts)
    trained = load_dataset(str(path), label_column=label_column, image_size=None)
    assert torch.equal(joined.x, trained.x)
    return trained


def _neighbours(tmp_path, write):
    """Load two data sets that differ in record 0 only; return (rest of D, rest of D')."""
    a, b = write(tmp_path / "a", 0), write(tmp_path / "b", 1)
    da, db = _federated_load(a, tmp_path), _federated_load(b, tmp_path)
    return da.x[1:], db.x[1:], da


def _csv(stem, variant):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"f0": rng.normal(5, 2, 40), "f1": rng.uniform(0, 100, 40), "label": rng.integers(0, 2, 40)})
    if variant:
        df.loc[0, ["f0", "f1"]] = [500.0, -300.0]  # one outlying record
    df.to_csv(path := stem.with_suffix(".csv"), index=False)
    return path


def _npz_table(stem, variant):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (30, 4)).astype(np.float32)
    x[0] = 1000.0 if variant else x[0]
    np.savez(path := stem.with_suffix(".npz"), x=x, y=rng.integers(0, 3, 30))
    return path


def _npz_images(stem, variant):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 200, (20, 6, 6), dtype=np.uint8)  # pixels 0..199
    x[0, 0, 0] = 255 if variant else x[0, 0, 0]  # one bright pixel in one record
    np.savez(path := stem.with_suffix(".npz"), x=x, y=rng.integers(0, 10, 20))
    return path


@pytest.mark.parametrize("write", [_csv, _npz_table, _npz_images], ids=["csv", "npz-table", "npz-images"])
def test_federated_preprocessing_is_record_independent(tmp_path, write):
    """#14.6 Preprocessing outside DP: changing one record must leave every other record's preprocessed features
    unchanged on the federated path (`dbclient join` validation and the ClientApp's `load_dataset` call).
    On main this failed for all three files: CSV and NPZ tables were standardised with the file's own mean/std and
    NPZ images rescaled by the file's min/max, so one outlier moved every other record (checked: max difference
    2.6 (CSV) and 2.8 (NPZ table), 0.44 for the images)."""
    rest_a, rest_b, ds = _neighbours(tmp_path, write)
    assert torch.equal(rest_a, rest_b), float((rest_a - rest_b).abs().max())
    assert "own statistics" not in ds.preprocessing and ds.preprocessing.startswith(("fixed", "features as stored"))


def test_image_scaling_is_fixed_by_type_not_by_the_files_range(tmp_path):
    """#14.6 Preprocessing outside DP: 8-bit pixels are scaled by 255 whatever the file's range, and float pixels
    outside [-1, 1] are refused instead of being min/max-rescaled. On main a uint8 file with pixels 0..100 was
    stretched to [-1, 1] (pixel 100 became +1.0 instead of 100/127.5 - 1), and floats 0..255 were min/max-rescaled."""
    x = np.tile(np.arange(0, 101, 100 / 35, dtype=np.float32).astype(np.uint8)[:36].reshape(6, 6), (4, 1, 1))
    np.savez(p := tmp_path / "dim.npz", x=x, y=np.array([0, 1, 0, 1]))
    d = load_dataset(p)
    assert torch.allclose(d.x, torch.tensor(x, dtype=torch.float32)[:, None] / 127.5 - 1)
    assert d.preprocessing == "fixed: 8-bit pixels x/127.5 - 1"
    np.savez(p, x=x.astype(np.float32), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"dim.npz: float pixels must already lie in \[-1, 1\]; image 0"):
        load_dataset(p)


def test_own_statistics_only_when_asked_and_public_statistics_reproduce_the_preset(tmp_path):
    """#14.6 Preprocessing outside DP: the choice is explicit and recorded. Own statistics are used only with
    stats="own" (local training) and say they are not covered by DP; the breast_cancer preset's published
    statistics standardise a company's raw records exactly like the built-in data set. On main nothing published
    statistics (AttributeError: Preset.feature_stats), `load_dataset` had no `stats` argument and always used the
    file's own statistics."""
    from sklearn.datasets import load_breast_cancer

    from dblocks.shared.presets import get_preset

    raw = load_breast_cancer()
    df = pd.DataFrame(raw.data[:100], columns=[f"f{i}" for i in range(30)]).assign(target=raw.target[:100])
    df.to_csv(p := tmp_path / "company.csv", index=False)
    stats = get_preset("breast_cancer").feature_stats()
    public = load_dataset(p, label_column="target", stats=stats)
    assert torch.allclose(public.x, load_builtin("breast_cancer").x[:100], atol=1e-5)
    assert public.preprocessing == "standardised with public statistics from sklearn breast_cancer (569 records)"
    own = load_dataset(p, label_column="target", stats="own")
    assert own.preprocessing == "standardised with own statistics (not covered by DP; local training only)"
    assert own.x.mean(0).abs().max() < 1e-4 and (own.x.std(0) - 1).abs().max() < 1e-4
    stored = load_dataset(p, label_column="target")
    assert torch.allclose(stored.x, torch.tensor(raw.data[:100], dtype=torch.float32))
    assert get_preset("mnist").feature_stats() is None
    with pytest.raises(DataError, match="for \\[30\\] features, the data has \\[4\\]"):
        load_dataset(_npz_table(tmp_path / "t", 0), stats=stats)
