"""`dbaudit` end to end on a small block directory: records, PNGs, exit codes, the HTML report."""

import json

import pytest
from test_canary import noise_scaled  # the planted bug lives in the tests only
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
    with noise_scaled(0.5):  # issue #22: a halved noise multiplier passed the old audit
        bad = _run(*args, "--no-control", "--out", tmp_path / "bad")
    assert bad.exit_code == 1, bad.output
    assert "is BELOW the claimed noise multiplier 2" in bad.output
    rep = _run("report", tmp_path, "--out", tmp_path / "report.html")
    assert rep.exit_code == 0, rep.output
    html = (tmp_path / "report.html").read_text()
    assert "Canary epsilon lower bound" in html and html.count("<tr>") == 3


def test_bad_input_says_what_to_do(tmp_path):
    r = _run("run", "--attack", "closed-form", "--observe", "raw", "--block-dir", tmp_path, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "missing" in r.output
    r = _run("run", "--attack", "membership", "--observe", "raw", "--block-dir", tmp_path)
    assert r.exit_code == 2 and "--observe weights" in r.output


# exit codes: 0 pass, 1 fail, 3 inconclusive, 2 bad usage or input (one line), 4 internal error (one line) ----------
def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.fixture(scope="module")
def batch_file(model_dir, tmp_path_factory):
    """A clipped update of one client's batch of 3 records, with its truth file."""
    upd = tmp_path_factory.mktemp("batch") / "batch.safetensors"
    r = _run(
        "make-update", "--block-dir", model_dir, "--block-index", 1, "--data", "digits", "--observe", "clipped",
        "--records", 3, "--out", upd,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return upd


def _audit_batch(model_dir, upd, out, *extra):
    return _run(
        "run", "--attack", "closed-form", "--observe", "clipped", "--block-dir", model_dir, "--block-index", 1,
        "--data", "digits", "--update", upd, "--targets", 1, "--out", out, *extra,
    )  # fmt: skip


def test_batch_file_without_records_reads_them_from_the_files(model_dir, batch_file, tmp_path):
    """Issue #22: a batch file audited without --records crashed with IndexError and exit 1 (read as "fail")."""
    r = _audit_batch(model_dir, batch_file, tmp_path / "a", "--truth", str(batch_file) + ".truth.npz")
    assert r.exit_code in (0, 1, 3) and "3 records per client" in r.output, r.output
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["config"]["records"] == 3
    # the sidecar written by an older make-update has no record count: the truth file's count / K is used
    meta = json.loads(batch_file.with_name(batch_file.name + ".json").read_text())
    assert meta["local"]["records"] == 3


def test_records_that_contradict_the_files_exit_2_in_one_line(model_dir, batch_file, tmp_path):
    r = _audit_batch(model_dir, batch_file, tmp_path / "b", "--records", 8)
    assert r.exit_code == 2
    assert "pass --records 3" in _one_line(r.output)
    other = tmp_path / "other.truth.npz"
    import numpy as np

    np.savez(other, x=np.zeros((5, 1, 8, 8), np.float32), y=np.zeros(5, np.int64))
    r = _audit_batch(model_dir, batch_file, tmp_path / "c", "--truth", other)
    assert r.exit_code == 2 and "holds 5 records" in _one_line(r.output)


def test_no_ground_truth_is_inconclusive_exit_3(model_dir, batch_file, tmp_path):
    r = _audit_batch(model_dir, batch_file, tmp_path / "d", "--no-control")
    assert r.exit_code == 3, r.output
    assert json.loads((tmp_path / "d" / "audit.json").read_text())["verdict"] == "inconclusive"


def test_a_bug_exits_4_never_1_in_one_line(model_dir, tmp_path, monkeypatch):
    import dblocks.privacy.attacks.runner as runner

    def broken(*a, **k):
        raise IndexError("index 6 is out of bounds for dimension 0 with size 1")

    monkeypatch.setattr(runner, "run_audit", broken)
    r = _run("run", "--attack", "closed-form", "--observe", "raw", "--block-dir", model_dir, "--block-index", 1,
             "--data", "digits", "--out", tmp_path / "e")  # fmt: skip
    assert r.exit_code == 4
    assert "internal error (IndexError" in _one_line(r.output)


@pytest.mark.parametrize(
    ("verdicts", "code"), [(["pass"], 0), (["pass", "inconclusive"], 3), (["inconclusive", "fail"], 1)]
)
def test_suite_exit_code_is_the_worst_verdict(model_dir, tmp_path, monkeypatch, verdicts, code):
    """The battery's verdicts come from a stand-in run_audit (the audits themselves are tested elsewhere)."""
    import dblocks.privacy.attacks.runner as runner
    from dblocks.privacy.attacks.record import AuditRecord

    given = iter(verdicts * 20)

    def fake(target, spec, out, **kw):
        v = next(given)
        return AuditRecord(spec.attack, spec.observe, spec.adversary, {}, [0], {}, {}, {}, {}, {}, {}, v, [v], "")

    monkeypatch.setattr(runner, "run_audit", fake)
    r = _run("suite", "--block-dir", model_dir, "--block-index", 1, "--data", "digits", "--out", tmp_path / "s")
    assert r.exit_code == code, r.output


def test_input_errors_of_every_command_exit_2_in_one_line(model_dir, tmp_path):
    r = _run("report", tmp_path / "nothing-here", "--out", tmp_path / "r.html")
    assert r.exit_code == 2 and _one_line(r.output).startswith("error:")
    r = _run(
        "make-update", "--block-dir", model_dir, "--block-index", 1, "--observe", "weights", "--out", tmp_path / "u"
    )
    assert r.exit_code == 2 and "not 'weights'" in _one_line(r.output)
    r = _run("suite", "--block-dir", tmp_path, "--out", tmp_path / "s")
    assert r.exit_code == 2 and _one_line(r.output).startswith("error:")
    r = _run("run", "--attack", "canary", "--observe", "clipped", "--block-dir", model_dir, "--block-index", 1,
             "--data", "digits", "--canary-level", "everyone")  # fmt: skip
    assert r.exit_code == 2 and "canary level" in _one_line(r.output)
    r = _run("run", "--attack", "closed-form", "--observe", "clipped", "--block-dir", model_dir, "--block-index", 1,
             "--data", "digits", "--update", tmp_path / "missing.safetensors")  # fmt: skip
    assert r.exit_code == 2 and "missing" in _one_line(r.output)


def test_canary_audit_without_the_power_to_refute_the_claim_is_inconclusive_exit_3(model_dir, tmp_path):
    """20 canaries cannot bound epsilon above the claim even with almost no noise (the positive control): the
    audit says so instead of passing."""
    r = _run("run", "--attack", "canary", "--observe", "clipped", "--block-dir", model_dir, "--block-index", 1,
             "--data", "digits", "--population", 64, "--canaries", 20, "--dp-batch-size", 8, "--dp-steps", 5,
             "--dp-noise-multiplier", 2.0, "--out", tmp_path / "weak")  # fmt: skip
    assert r.exit_code == 3, r.output
    rec = json.loads((tmp_path / "weak" / "audit.json").read_text())
    assert rec["verdict"] == "inconclusive" and not rec["controls"]["low_noise"]["passed"]
