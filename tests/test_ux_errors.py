"""#19/#23: a user's mistake ends in one `error:` line with exit code 2 — never a traceback, never local variables,
never more than an excerpt of the data — and files that are not sane tables are refused before a full read."""

import importlib
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas  # noqa: F401  (imported here so that the memory check below measures reading, not importing)
import pytest

from dblocks.shared.data import DataError, load_dataset
from dblocks.shared.sniff import sniff_csv

BIN = Path(sys.executable).parent


def _run(*argv, env=None):
    t0 = time.perf_counter()
    r = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60, env=env)
    return r, time.perf_counter() - t0


def test_a_1gib_sparse_csv_is_refused_in_milliseconds_without_reading_it(tmp_path):
    """#23: a 1 GB sparse file named .csv took 8.8 GB of memory and over 10 minutes (pandas read it as one column
    name). It is sniffed now: refused from its first 64 KiB."""
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as f:
        f.truncate(1 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="NUL bytes, so it is a binary or sparse file"):
        load_dataset(huge)
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB: no full read


@pytest.mark.parametrize(
    "content,msg",
    [
        (b"", "the file is empty"),
        (b"x" * 100_000 + b"\n1\n", "first line is longer than 64 KiB"),
        (b"abc\n1\n2\n", "found a single column"),
        (b"a,b,label\n1,2,caf\xe9\n", "is not UTF-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "NUL bytes"),
    ],
    ids=["empty", "long-header", "one-column", "latin-1", "png"],
)
def test_sniffing_refuses_what_is_not_a_table(tmp_path, content, msg):
    p = tmp_path / "t.csv"
    p.write_bytes(content)
    with pytest.raises(DataError, match=msg) as e:
        sniff_csv(p)
    assert len(str(e.value)) < 400


def test_delimiters_are_detected(tmp_path):
    for sep in (";", "\t", "|"):
        p = tmp_path / "t.csv"
        p.write_text(sep.join(["a", "b", "label"]) + "\n" + "\n".join(sep.join(["1", "2", "x"]) for _ in range(3)))
        assert load_dataset(p).x.shape == (3, 2)


def test_cli_errors_are_one_line_exit_2_and_fast(tmp_path):
    (tmp_path / "text.csv").write_text("a,b,label\n1,2,x\n3,hello,y\n")
    (tmp_path / "x.json").write_text("{}")
    with open(tmp_path / "huge.csv", "wb") as f:
        f.truncate(1 << 30)
    cases = [
        (["dblocks", "train", "--out", str(tmp_path / "m"), "--data", str(tmp_path / "huge.csv")], "NUL bytes"),
        (["dblocks", "train", "--preset", "cifar", "--out", str(tmp_path / "m")], "unknown preset 'cifar'"),
        (["dblocks", "eval", str(tmp_path)], "no model.json"),
        (["dblocks", "predict", str(tmp_path), "--data", str(tmp_path / "x.json")], "unsupported file type"),
    ]
    for argv, msg in cases:
        r, seconds = _run(*argv)
        out = r.stdout + r.stderr
        assert r.returncode == 2 and msg in out and "Traceback" not in out, out
        assert len(out.strip().splitlines()) == 1 and out.startswith("error:"), out
        assert seconds < 10
    r, _ = _run("dblocks", "train", "--out", str(tmp_path / "m"), "--data", str(tmp_path / "text.csv"))
    assert r.returncode == 2 and "column 'b' is not numeric (row 2: 'hello')" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_debug_shows_the_traceback_and_internal_errors_are_one_line(tmp_path, monkeypatch):
    r, _ = _run("dblocks", "train", "--out", str(tmp_path / "m"), "--data", str(tmp_path / "nope.csv"), "--debug")
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr and "no such file" in r.stdout
    # an internal error (a bug, not the user's mistake): one line, exit 1, no locals
    from dblocks.shared import clierrors

    app = clierrors.SafeTyper()

    @app.command()
    def boom(secret: str = "private-record-123") -> None:
        raise RuntimeError("bug")

    @app.command()
    def other() -> None:
        pass

    monkeypatch.setattr(sys, "argv", ["x", "boom"])
    with pytest.raises(SystemExit) as e:
        app()
    assert e.value.code == 1


@pytest.mark.parametrize(
    "module,attr",
    [
        ("dblocks.shared.cli", "app"),
        ("dblocks.client.cli", "app"),
        ("dblocks.client.cli", "keys_app"),
        ("dblocks.server.cli", "app"),
        ("dblocks.server.federation.cli", "run_app"),
        ("dblocks.server.federation.cli", "nodes_app"),
        ("dblocks.privacy.cli", "app"),
    ],
)
def test_no_cli_shows_local_variables_in_tracebacks(module, attr):
    """#23: rich tracebacks with show_locals printed tensors of private records to the console and logs."""
    app = getattr(importlib.import_module(module), attr)
    assert app.pretty_exceptions_show_locals is False


def test_what_the_cli_knows_of_presets_and_recipes_matches_them():
    """The CLI refuses a preset that cannot take the data before importing torch, from its own copy of what each
    preset is; it must agree with shared/presets.py and shared/recipes.py."""
    from dblocks.shared.cli import PRESET_SHAPES, RECIPE_LAYERS
    from dblocks.shared.presets import PRESETS
    from dblocks.shared.recipes import image_recipe, tabular_recipe

    assert set(PRESET_SHAPES) == set(PRESETS)
    for name, (kind, layers, what) in PRESET_SHAPES.items():
        p = PRESETS[name]
        assert (p.arch.input, p.total_layers, p.kind) == (kind, layers, what), name
    assert RECIPE_LAYERS == {
        "tabular": tabular_recipe(100, 3, 2).preset.total_layers,
        "image": image_recipe(100, 1, 8, 2).preset.total_layers,
    }
