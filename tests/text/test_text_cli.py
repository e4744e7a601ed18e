"""`dblocks train/eval/sample` with a text preset: bad text is one line and exit 2; train -> eval -> sample works."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dblocks.shared.cli import app
from dblocks.shared.errors import DataError

BIN = Path(sys.executable).parent
runner = CliRunner()


def test_bad_text_files_end_in_one_line_exit_2(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    for name, says in (("empty.txt", "is empty"), ("latin1.txt", "not UTF-8")):
        r = subprocess.run(
            [BIN / "dblocks", "train", "--preset", "text-mdm", "--data", str(tmp_path / name), "--out", "m.pt"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert r.returncode == 2 and says in r.stdout and len(r.stdout.strip().splitlines()) == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stdout + r.stderr and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("content, says", [(b"\x89PNG\r\n\x1a\n\x00\x00", "looks binary"), (None, "does not exist")])
def test_bad_text_files_are_data_errors(tmp_path, content, says):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    r = runner.invoke(app, ["train", "--preset", "text-mdm", "--data", str(path), "--out", str(tmp_path / "m.pt")])
    assert isinstance(r.exception, DataError) and says in str(r.exception)
    if content is not None:
        r = runner.invoke(app, ["eval", "--model", str(path)])  # not a model file either
        assert isinstance(r.exception, DataError) and "not a dblocks text model" in str(r.exception)


def test_train_eval_sample_round_trip(tmp_path):
    data = tmp_path / "code.py"
    data.write_text("".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(500)))
    model = tmp_path / "m.pt"
    r = runner.invoke(app, ["train", "--preset", "text-mdm", "--data", str(data), "--steps", "1", "--out", str(model)])
    assert r.exit_code == 0 and model.is_file(), r.output
    r = runner.invoke(app, ["eval", "--model", str(model), "--max-windows", "4"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["split"] == "test" and result["data"] == "code.py" and 6 < result["bpc"] < 9
    r = runner.invoke(app, ["sample", "--model", str(model), "--prompt", "def ", "--tokens", "8", "--num", "2"])
    assert r.exit_code == 0 and r.output.count("def ") >= 2, r.output
    r = runner.invoke(app, ["train", "--preset", "text-mdm", "--out", str(tmp_path / "x.pt"), "--epochs", "2"])
    assert r.exit_code == 2 and "--steps" in r.output
