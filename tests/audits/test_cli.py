"""`dbaudit` end to end on a small block directory: records, PNGs, exit codes, the HTML report."""

import json

import pytest
from test_canary import noise_disabled  # the planted bug lives in the tests only
from typer.testing import CliRunner

from dblocks.privacy.cli import app
from dblocks.shared.wire import pack_block, save_block

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained_blocks):
    d = tmp_path_factory.mktemp("model")
    block = trained_blocks["classifier"]
    spec, data = pack_block("digits-tiny", block.schedule, 1, block)
    save_block(d, spec, data)
    return d


def _run(*args):
    return runner.invoke(app, [*map(str, args)], catch_exceptions=False)


def test_raw_update_fails_the_audit_with_a_record_and_png(model_dir, tmp_path):
    out = tmp_path / "raw"
    r = _run(
        "run",
        "--attack",
        "closed-form",
        "--observe",
        "raw",
        "--block-dir",
        model_dir,
        "--block-index",
        1,
        "--data",
        "digits",
        "--targets",
        3,
        "--out",
        out,
    )
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output
    rec = json.loads((out / "audit.json").read_text())
    assert rec["verdict"] == "fail" and rec["controls"]["raw_single_record"]["passed"]
    assert rec["metrics"]["psnr"]["value"] > 60 and len(rec["config_hash"]) == 64
    assert rec["block"]["block_index"] == 1 and rec["block"]["training_interval"]
    assert (out / "reconstructions.png").exists() and (out / "control.png").exists()


def test_release_file_conforms_and_resists_the_closed_form(model_dir, tmp_path):
    upd = tmp_path / "rel.safetensors"
    r = _run(
        "make-update",
        "--block-dir",
        model_dir,
        "--block-index",
        1,
        "--data",
        "digits",
        "--observe",
        "release",
        "--clients",
        4,
        "--noise-multiplier",
        1.0,
        "--out",
        upd,
    )
    assert r.exit_code == 0, r.output
    r = _run(
        "run",
        "--attack",
        "noise-conformance",
        "--observe",
        "release",
        "--block-dir",
        model_dir,
        "--block-index",
        1,
        "--data",
        "digits",
        "--update",
        upd,
        "--out",
        tmp_path / "conf",
    )
    assert r.exit_code == 0, r.output
    r = _run(
        "run",
        "--attack",
        "closed-form",
        "--observe",
        "release",
        "--block-dir",
        model_dir,
        "--block-index",
        1,
        "--data",
        "digits",
        "--update",
        upd,
        "--truth",
        str(upd) + ".truth.npz",
        "--out",
        tmp_path / "cf",
    )
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "cf" / "audit.json").read_text())
    assert rec["metrics"]["psnr_over_mean_baseline"]["value"] < 1.0


def test_planted_noise_bug_exits_non_zero(model_dir, tmp_path):
    args = [
        "run",
        "--attack",
        "canary",
        "--observe",
        "clipped",
        "--block-dir",
        model_dir,
        "--block-index",
        1,
        "--data",
        "digits",
        "--population",
        256,
        "--canaries",
        400,
        "--dp-noise-multiplier",
        2.0,
        "--dp-batch-size",
        32,
        "--dp-steps",
        40,
    ]
    ok = _run(*args, "--out", tmp_path / "ok")
    assert ok.exit_code == 0, ok.output
    with noise_disabled():
        bad = _run(*args, "--no-control", "--out", tmp_path / "bad")
    assert bad.exit_code == 1, bad.output
    assert "EXCEEDS the claimed epsilon" in bad.output
    rep = _run("report", tmp_path, "--out", tmp_path / "report.html")
    assert rep.exit_code == 0, rep.output
    html = (tmp_path / "report.html").read_text()
    assert "Canary epsilon lower bound" in html and html.count("<tr>") == 3


def test_bad_input_says_what_to_do(tmp_path):
    r = _run("run", "--attack", "closed-form", "--observe", "raw", "--block-dir", tmp_path, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "missing" in r.output
    r = _run("run", "--attack", "membership", "--observe", "raw", "--block-dir", tmp_path)
    assert r.exit_code == 2 and "--observe weights" in r.output
