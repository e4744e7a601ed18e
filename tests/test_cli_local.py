import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_train_eval_and_demo(tmp_path):
    r = subprocess.run(
        [BIN / "dblocks", "demo", "--quick", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert res["diffusionblocks"] > 0.6 and res["end-to-end"] > 0.6  # 3 epochs on digits
    r = subprocess.run(
        [BIN / "dblocks", "eval", str(tmp_path / "demo" / "diffusionblocks")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and '"accuracy"' in r.stdout


def test_cli_errors_are_clear(tmp_path):
    r = subprocess.run(
        [
            BIN / "dblocks",
            "train",
            "--preset",
            "digits",
            "--out",
            str(tmp_path / "m"),
            "--data",
            str(tmp_path / "nope.csv"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "nope.csv: no such file" in r.stdout
    r = subprocess.run([BIN / "dblocks", "eval", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "no model.json" in r.stdout
