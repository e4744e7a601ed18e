"""#23: the run's class list, fixed by the server, maps every company's labels to the same indices.

Companies hold digits images with string labels ("zero".."nine"), each a different subset of the classes in its
own row order; sorting a file's own labels (what a file read on its own gives) would number them differently at
every company. The federation runs in process (the real ClientApp, DP-SGD, SecAgg+; see test_inprocess.py) with
`RunConfig.classes` declared in an order that is not sorted, and every company's label tensor, as handed to
DP-SGD, is checked against the true digit of each row. A label outside the run's list refuses the task before any
record is used (the ledger stays empty), and `dbclient join --classes` refuses such a file before it connects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from test_inprocess import InProcessGrid
from typer.testing import CliRunner

from dblocks.client.cli import app as dbclient
from dblocks.server.federation.config import RunConfig
from dblocks.server.federation.serverapp import Federation
from dblocks.shared.data import load_dataset
from dblocks.shared.presets import get_preset

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]  # index = digit
SUBSETS = [(7, 2, 9), (0, 1, 2, 3), (4, 5, 6, 8), (9, 8, 7, 6, 5), (1, 3, 5, 7, 9), (0, 2, 4, 6, 8)]


def company_files(root: Path, subsets=SUBSETS, per_class: int = 8) -> list[tuple[Path, np.ndarray]]:
    """One NPZ per company: digits images of its classes, labels as strings, rows shuffled; with the true digits."""
    train, _ = get_preset("digits").load_split()
    x, y = train.x.numpy(), train.y.numpy()
    rng = np.random.default_rng(0)
    out = []
    for i, classes in enumerate(subsets):
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in classes])
        idx = rng.permutation(idx)
        p = root / f"company{i}.npz"
        np.savez(p, x=x[idx], y=np.array([NAMES[d] for d in y[idx]]))
        out.append((p, y[idx]))
    return out


@pytest.fixture
def federation(tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    import dblocks.client.trainer as trainer

    seen: dict[str, tuple[list[str], list[int]]] = {}  # data file -> (class names, labels) handed to DP-SGD
    real = trainer.train_task

    def spy(task, arrays, data, *args, **kwargs):
        seen[data.name] = (list(data.class_names), data.y.tolist())
        return real(task, arrays, data, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_task", spy)
    files = company_files(tmp_path)
    nodes = {
        1000 + i: {"data-path": str(p), "ledger-path": str(tmp_path / f"ledger{i}.json"), "epsilon-budget": 50.0}
        for i, (p, _) in enumerate(files)
    }
    order = [3, 0, 9, 5, 1, 7, 2, 8, 6, 4]  # the operator's order: index k is NAMES[order[k]], not sorted
    cfg = RunConfig(
        run_id="classes",
        task="digits",
        num_blocks=2,
        num_rounds=1,
        cohort_size=3,
        min_cohort=3,
        record_steps=1,
        classes=[NAMES[d] for d in order],
        checkpoint_dir=str(tmp_path / "run" / "checkpoints"),
    )
    return tmp_path, files, nodes, cfg, order, seen


def test_companies_with_different_class_subsets_map_labels_through_the_runs_list(federation):
    tmp, files, nodes, cfg, order, seen = federation
    grid = InProcessGrid(nodes)
    Federation(cfg, grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})).run()
    status = json.loads((tmp / "run" / "status.json").read_text())
    assert status["status"] == "finished" and status["rounds"][0]["blocks"] == [0, 1], status
    assert len(seen) == len(files)  # every company trained
    index_of_digit = {d: k for k, d in enumerate(order)}
    for path, digits in files:
        names, labels = seen[path.name]
        assert names == cfg.classes
        assert labels == [index_of_digit[int(d)] for d in digits], path.name  # index k = the same class everywhere
    # what each file read on its own would give: its sorted strings, another numbering at every company
    own = [load_dataset(p).y.tolist() for p, _ in files]
    assert all(o != seen[p.name][1] for o, (p, _) in zip(own, files))


def test_a_label_outside_the_runs_list_refuses_the_task_before_any_record_is_used(federation):
    tmp, files, nodes, cfg, order, seen = federation
    bad = tmp / "bad.npz"
    z = np.load(files[0][0])
    y = z["y"].copy()
    y[5] = "ten"
    np.savez(bad, x=z["x"], y=y)
    from dblocks.client.clientapp import train_block
    from dblocks.server.federation.model_state import GlobalModel
    from dblocks.server.federation.releases import ReleaseLog
    from dblocks.server.federation.strategy import BlockStrategy
    from dblocks.shared.data import DataError

    preset = get_preset("digits")
    model = GlobalModel.initial(preset, preset.noise_schedule(2), 0)
    task = BlockStrategy(cfg, model, ReleaseLog(tmp / "releases.json"), 0, lambda: 1).configure(1, 0)
    arrays = [v.numpy() for v in model.blocks[0].module.state_dict().values()]
    ledger = tmp / "bad-ledger.json"
    nc = {"data-path": str(bad), "ledger-path": str(ledger), "progress-path": str(tmp / "progress.log")}
    with pytest.raises(DataError, match="not in the class list.*unknown: 'ten'"):
        train_block(nc, task, arrays)
    assert not seen and not ledger.exists()  # nothing trained, nothing spent
    assert "REFUSED" in (tmp / "progress.log").read_text()
    # a company that joined with another class list refuses the run's tasks
    from dblocks.client.join import encode_classes

    other = {**nc, "data-path": str(files[0][0]), "classes": encode_classes(sorted(NAMES))}
    with pytest.raises(DataError, match="not the one this company joined with"):
        train_block(other, task, arrays)
    assert not seen and not ledger.exists()


def test_a_class_list_that_does_not_fit_the_model_stops_the_run_before_it_starts(federation):
    tmp, files, nodes, cfg, order, seen = federation
    from dataclasses import replace

    with pytest.raises(ValueError, match="has 3 names but the task's model has 10 classes"):
        Federation(
            replace(cfg, classes=["a", "b", "c"]),
            InProcessGrid(nodes),
            Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        )


def test_dbclient_join_and_check_data_refuse_a_label_outside_the_runs_list(federation):
    tmp, files, *_ = federation
    run_classes = ",".join(n for n in NAMES if n != "seven")  # company 0 holds sevens
    r = CliRunner().invoke(dbclient, ["check-data", str(files[0][0]), "--classes", run_classes])
    assert r.exit_code == 2 and "unknown: 'seven'" in r.output and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(
        dbclient,
        ["join", "--server", "127.0.0.1:1", "--data", str(files[0][0]), "--classes", run_classes, "--insecure"],
    )
    assert r.exit_code == 2 and "unknown: 'seven'" in r.output and "nothing was sent" in r.output, r.output
    r = CliRunner().invoke(dbclient, ["check-data", str(files[1][0]), "--classes", ",".join(NAMES)])
    assert r.exit_code == 0 and "6 of the 10 classes have no example" in r.output, r.output


def test_the_tasks_feature_statistics_and_class_list_are_applied_to_a_companys_table(tmp_path):
    """The run's contract as a BlockTask carries it (JSON text): a table with string labels in its own order is
    standardised with the run's statistics (never its own) and mapped to the run's indices; a malformed
    contract is refused when the task is built."""
    import pandas as pd

    from dblocks.shared.schema import RunData

    run = RunData(["low", "mid", "high"], [10.0, 0.0], [2.0, 0.5], "public statistics")
    path = tmp_path / "company.csv"
    pd.DataFrame({"a": [12.0, 8.0, 10.0], "b": [0.5, -0.5, 1.0], "label": ["high", "low", "high"]}).to_csv(
        path, index=False
    )
    got = RunData.from_task(**run.task_fields())
    assert got == run
    ds = got.load(path, label_column="label")
    assert ds.y.tolist() == [2, 0, 2] and ds.class_names == ["low", "mid", "high"]
    assert ds.x.tolist() == [[1.0, 1.0], [-1.0, -1.0], [0.0, 2.0]]  # (x - run mean) / run std, not its own
    for bad in ({"class_names": '["a"]'}, {"class_names": '["a", "a"]'}, {"class_names": "a,b"}):
        with pytest.raises(ValueError):
            RunData.from_task(bad["class_names"], "")
    with pytest.raises(ValueError, match="finite"):
        RunData.from_task('["a", "b"]', '{"mean": [0.0], "std": [0.0]}')
