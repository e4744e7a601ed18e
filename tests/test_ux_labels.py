"""#23: the class list and the feature preprocessing are part of the model: fixed at training, saved with it, and
applied unchanged to every file eval and predict read (labels by name, columns by name, the training split's
statistics). A label the model does not know is refused with a message naming it."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from dblocks.shared.cli import app
from dblocks.shared.data import DataError, FeatureStats, load_dataset
from dblocks.shared.schema import DataSchema


def _table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(["cat", "dog", "eel"])[np.arange(n) % 3]
    x = rng.normal(0, 1, (n, 3)) + (np.arange(n) % 3)[:, None] * 3.0
    df = pd.DataFrame(x, columns=["f0", "f1", "f2"])
    df.insert(1, "kind", y)
    return df


def _schema(tmp_path, df):
    df.to_csv(tmp_path / "train.csv", index=False)
    ds = load_dataset(tmp_path / "train.csv", label_column="kind")
    stats = FeatureStats.of(ds.x, "training split")
    return DataSchema.of(ds, label_column="kind", stats=stats), ds.standardize(stats)


def test_labels_columns_and_statistics_follow_the_model_not_the_file(tmp_path):
    """On main (issue #23) each file's labels were numbered by sorting its own values and standardised with its own
    statistics: a file holding only 'eel' rows had them all labelled 0 ('cat')."""
    df = _table()
    schema, ref = _schema(tmp_path, df)
    assert schema.class_names == ["cat", "dog", "eel"] and schema.feature_names == ["f0", "f1", "f2"]
    variants = {
        "shuffled.csv": df.sample(frac=1, random_state=1),
        "reordered.csv": df[["f2", "kind", "f0", "f1"]],
        "subset.csv": df[df["kind"] == "eel"],
        "two.parquet": df[df["kind"] != "cat"],
    }
    for name, v in variants.items():
        p = tmp_path / name
        v.to_csv(p, index=False) if name.endswith(".csv") else v.to_parquet(p)
        got = schema.load(p)
        idx = torch.as_tensor(v.index.to_numpy())
        assert torch.equal(got.y, ref.y[idx]), name  # the same class index for the same row
        assert torch.allclose(got.x, ref.x[idx], atol=1e-5), name  # the training statistics, not the file's
    assert any("have no example" in n for n in schema.load(tmp_path / "subset.csv").notes)


def test_integer_and_string_labels_match_by_value(tmp_path):
    df = _table().assign(kind=lambda d: d["kind"].map({"cat": 0, "dog": 1, "eel": 2}))
    schema, ref = _schema(tmp_path, df)
    assert schema.class_names == ["0", "1", "2"]
    for name, v in {"str.parquet": df.astype({"kind": str}), "float.csv": df.astype({"kind": float})}.items():
        p = tmp_path / name
        v.to_csv(p, index=False) if name.endswith(".csv") else v.to_parquet(p)
        assert torch.equal(schema.load(p).y, ref.y), name


def test_unknown_labels_and_missing_columns_are_refused(tmp_path):
    df = _table()
    schema, _ = _schema(tmp_path, df)
    df.assign(kind=df["kind"].replace("eel", "fox")).to_csv(tmp_path / "fox.csv", index=False)
    with pytest.raises(DataError, match=r"20 label\(s\) not in the class list .*unknown: 'fox'.*'cat', 'dog', 'eel'"):
        schema.load(tmp_path / "fox.csv")
    df.assign(kind=np.arange(len(df)) % 3).to_csv(tmp_path / "ints.csv", index=False)
    with pytest.raises(DataError, match="not in the class list"):
        schema.load(tmp_path / "ints.csv")
    df.drop(columns="f1").to_csv(tmp_path / "nof1.csv", index=False)
    with pytest.raises(DataError, match=r"lacks 1 of the model's 3 feature columns \('f1'\)"):
        schema.load(tmp_path / "nof1.csv")
    long = "x" * 5000
    df.assign(kind=df["kind"].replace("eel", long)).to_csv(tmp_path / "long.csv", index=False)
    with pytest.raises(DataError) as e:
        schema.load(tmp_path / "long.csv")
    assert len(str(e.value)) < 700  # a bounded excerpt, never the whole value


def test_train_eval_predict_through_the_cli(tmp_path):
    """`dblocks train --data` (recipe from the data, held-out split, report), `eval` on a re-encoded file and
    `predict` with class names; a file with an unknown label exits 2."""
    df = _table(90)
    df.to_csv(tmp_path / "train.csv", index=False)
    model = tmp_path / "m"
    run = CliRunner().invoke
    r = run(
        app,
        [
            "train",
            "--data",
            str(tmp_path / "train.csv"),
            "--label-column",
            "kind",
            "--out",
            str(model),
            "--epochs",
            "1",
            "--test-fraction",
            "0.2",
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads((model / "report.json").read_text())
    assert set(report["per_class"]) == {"cat", "dog", "eel"} and report["examples"] == 18
    schema = json.loads((model / "model.json").read_text())["dataset"]["schema"]
    assert schema["class_names"] == ["cat", "dog", "eel"] and len(schema["mean"]) == 3
    r = run(app, ["eval", str(model)])  # the held-out split, re-made from the recorded file, fraction and seed
    assert r.exit_code == 0 and json.loads(r.output)["examples"] == 18, r.output
    df[df["kind"] == "dog"].sample(frac=1, random_state=0).to_csv(tmp_path / "dogs.csv", index=False)
    r = run(app, ["eval", str(model), "--data", str(tmp_path / "dogs.csv")])
    assert r.exit_code == 0 and "2 of the 3 classes have no example" in r.output, r.output
    assert json.loads(r.output[r.output.index("{") :])["per_class"]["dog"]["examples"] == 30
    df.drop(columns="kind").head(7).to_csv(tmp_path / "new.csv", index=False)
    r = run(app, ["predict", str(model), "--data", str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(tmp_path / "p.csv")
    assert len(pred) == 7 and set(pred["prediction"]) <= {"cat", "dog", "eel"}
    assert list(pred.columns) == ["row", "prediction", "probability", "p_cat", "p_dog", "p_eel"]
    df.assign(kind="fox").to_csv(tmp_path / "fox.csv", index=False)
    r = run(app, ["eval", str(model), "--data", str(tmp_path / "fox.csv")])  # in-process: the DataError itself
    assert isinstance(r.exception, DataError) and "not in the class list" in str(r.exception)
