"""The bench scripts still run end to end (their --quick modes) and write the results the docs are built from."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_quick_benches_write_results_and_summary(tmp_path):
    for script in ("accuracy.py", "generation.py", "memory.py"):
        r = subprocess.run(
            [sys.executable, str(BENCH / script), "--quick", "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert r.returncode == 0, f"{script} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"

    acc = json.loads((tmp_path / "accuracy.json").read_text())
    main = acc["tables"]["main"]["digits"]
    assert 0 <= main["diffusion_blocks_b4"]["median"] <= 100 and 0 <= main["end_to_end"]["median"] <= 100
    assert acc["tables"]["ablation"]["digits"]["cumulative"], "the naive -> final table is empty"

    gen = json.loads((tmp_path / "generation.json").read_text())
    assert len(gen["classifier"]["sha256"]) == 64
    for name in ("diffusion_blocks", "end_to_end"):
        png = gen["models"][name]["by_steps_per_block"]["1"]["grid_png"]
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    mem = json.loads((tmp_path / "memory.json").read_text())
    for row in mem["rows"]:  # one block holds less than the whole model, by both measures
        assert row["ratio_torch"] > 1 and row["block"]["torch"]["saved_activations_mib"] > 0

    summary = json.loads((tmp_path / "summary.json").read_text())
    core = {k.removeprefix("core."): v for k, v in summary.items() if k.startswith("core.")}
    assert set(core) == {"accuracy_gap_points", "generation_fd_ratio", "generation_class_agreement", "memory_ratio_min"}
    assert "digits" in core["accuracy_gap_points"]
