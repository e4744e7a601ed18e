import numpy as np
import pytest
import torch

from dblocks.shared.data import (
    DataError,
    load_builtin,
    load_dataset,
    partition_dirichlet,
    partition_iid,
    save_npz,
    stratified_split,
)


def test_builtin_datasets_load_with_expected_shapes():
    d = load_builtin("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.x.min() >= -1 and d.x.max() <= 1 and d.num_classes == 10
    b = load_builtin("breast_cancer")
    assert b.x.shape == (569, 30) and b.kind == "tabular" and abs(float(b.x.mean())) < 1e-5
    m = load_builtin("mnist")
    assert m.x.shape == (5000, 1, 28, 28) and np.bincount(m.y.numpy()).tolist() == [500] * 10
    assert load_builtin("mnist", image_size=14).x.shape == (5000, 1, 14, 14)


def test_fixed_stratified_split_is_deterministic():
    m = load_builtin("mnist")
    tr, te = stratified_split(m, 1000, seed=0)
    tr2, te2 = stratified_split(m, 1000, seed=0)
    assert len(tr) == 4000 and len(te) == 1000 and torch.equal(te.y, te2.y) and torch.equal(tr.x, tr2.x)
    assert np.bincount(te.y.numpy()).tolist() == [100] * 10


def test_partitions_are_deterministic_and_cover_everything():
    y = load_builtin("mnist").y.numpy()[np.random.default_rng(0).permutation(5000)[:3000]]
    parts = partition_dirichlet(y, 12, alpha=0.5, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(3000))
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_dirichlet(y, 12, alpha=0.5, seed=3)))
    # label skew: a Dirichlet(0.5) company is far from the global label mix; IID ones are close
    skew = lambda p: np.abs(np.bincount(y[p], minlength=10) / len(p) - 0.1).sum()  # noqa: E731
    assert np.mean([skew(p) for p in parts]) > 0.5
    iid = partition_iid(3000, 12, seed=0)
    assert np.mean([skew(p) for p in iid]) < 0.25 and sum(map(len, iid)) == 3000


def test_user_files_load(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,label\n1,2,yes\n3,4,no\n5,6,yes\n")
    d = load_dataset(csv)
    assert d.kind == "tabular" and d.x.shape == (3, 2) and d.class_names == ["no", "yes"] and d.y.tolist() == [1, 0, 1]
    pq = tmp_path / "t.parquet"
    import pandas as pd

    pd.DataFrame({"f": [0.1, 0.2], "target": [0, 1]}).to_parquet(pq)
    assert load_dataset(pq, label_column="target").x.shape == (2, 1)
    npz = tmp_path / "img.npz"
    np.savez(npz, x=np.random.randint(0, 256, (4, 6, 6)), y=np.array([0, 1, 2, 1]))
    d = load_dataset(npz)
    assert d.kind == "image" and d.x.shape == (4, 1, 6, 6) and d.x.min() >= -1 and d.x.max() <= 1
    save_npz(load_builtin("digits").subset(np.arange(10)), tmp_path / "digits.npz")
    assert load_dataset(tmp_path / "digits.npz").x.shape == (10, 1, 8, 8)
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.random.randint(0, 255, (5, 5), dtype=np.uint8)).save(
                tmp_path / "imgs" / cls / f"{k}.png"
            )
    d = load_dataset(tmp_path / "imgs")
    assert d.x.shape == (4, 1, 5, 5) and d.class_names == ["cat", "dog"]


BAD_FILES = [
    ("nolabel.csv", "a,b\n1,2\n", "no label column 'label'"),
    ("text.csv", "a,label\n1,0\nhello,1\n", "column 'a' is not numeric \\(row 2"),
    ("nan.csv", "a,label\n1,0\n,1\n", "column 'a' has 1 missing"),
    ("nolab.csv", "a,label\n1,0\n2,\n", "1 rows have no label"),
    ("empty.csv", "a,label\n", "no rows"),
    ("garbage.parquet", "not parquet", "is not a Parquet file"),
    ("data.json", "{}", "unsupported file type"),
]


@pytest.mark.parametrize("name,content,msg", BAD_FILES)
def test_bad_files_give_errors_naming_the_file_and_problem(tmp_path, name, content, msg):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=msg) as e:
        load_dataset(p)
    assert name in str(e.value)


def test_bad_npz_and_folders(tmp_path):
    p = tmp_path / "a.npz"
    np.savez(p, x=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"a.npz: missing array\(s\) \['y'\]"):
        load_dataset(p)
    np.savez(p, x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match="'y' must have shape \\[3\\]"):
        load_dataset(p)
    np.savez(p, x=np.full((2, 2), np.nan), y=np.zeros(2))
    with pytest.raises(DataError, match="NaN"):
        load_dataset(p)
    np.savez(p, x=np.zeros((2, 3, 4, 5)), y=np.zeros(2))
    with pytest.raises(DataError, match="H == W"):
        load_dataset(p)
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="trunc.npz: not a readable .npz"):
        load_dataset(tmp_path / "trunc.npz")
    (tmp_path / "folder" / "a").mkdir(parents=True)
    (tmp_path / "folder" / "a" / "x.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="x.png: not a readable image"):
        load_dataset(tmp_path / "folder")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="unknown built-in|no such file"):
        load_dataset("cifar")
