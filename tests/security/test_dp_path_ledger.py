"""#14.3 (High): concurrent tasks must not overspend the budget or lose ledger entries; the ledger is keyed by the
data's content. Real processes (fork), real files, the real trainer and accountant."""

from __future__ import annotations

import json
import multiprocessing
import shutil

import pytest

from dblocks.client.join import ledger_path
from dblocks.client.ledger import PrivacyLedger
from dblocks.client.trainer import train_task

from ._dp_path_common import arrays, company_data, save_company_data, task

# one task spends epsilon 10.27 (rdp, delta 1e-5); two compose to 14.44: a budget of 12 affords exactly one
EXPENSIVE = dict(noise_multiplier=0.8, sample_rate=0.5, steps=4)
BUDGET = 12.0


def _company(path, budget, cfg, barrier, results):
    """One ClientApp process: wait for the other, then train the task against the shared ledger file."""
    import torch

    torch.set_num_threads(1)
    barrier.wait(timeout=30)
    try:
        train_task(task(1, **cfg), arrays(1), company_data(), PrivacyLedger(path, budget=budget, accountant="rdp"))
        results.put("trained")
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put(f"{type(e).__name__}: {e}")


def _race(path, budget: float, cfgs: list[dict]) -> list[str]:
    arrays(1), company_data()  # built before forking: both processes start at once
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(len(cfgs)), ctx.Queue()
    procs = [ctx.Process(target=_company, args=(path, budget, cfg, barrier, results)) for cfg in cfgs]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return sorted(out)


def _entries(path) -> list[dict]:
    return json.loads(path.read_text())["entries"] if path.exists() else []


@pytest.mark.timeout(120)
def test_ledger_concurrent_tasks_cannot_overspend(tmp_path):
    """#14.3: two tasks of epsilon 10.27 each, at once, against a budget of 12: exactly one trains, the other is
    refused, and the file keeps the entry. On main both passed the check (it read the ledger, trained, then
    rewrote the whole file), both trained, and only one of the two entries survived."""
    path = tmp_path / "ledger.json"
    out = _race(path, BUDGET, [dict(EXPENSIVE, round=1), dict(EXPENSIVE, round=2)])
    assert out[1] == "trained" and out[0].startswith("BudgetExceeded"), out
    entries = _entries(path)
    assert len(entries) == 1 and entries[0]["epsilon_after"] <= BUDGET, entries


@pytest.mark.timeout(120)
def test_ledger_replayed_task_refused_under_concurrency(tmp_path):
    """#14.3: the same task delivered twice at once (a replay) trains once. On main both copies passed `seen`
    (checked before training, recorded after) and trained: the budget was spent twice, one entry kept."""
    path = tmp_path / "ledger.json"
    out = _race(path, 1000.0, [dict(round=5), dict(round=5)])
    assert out[1] == "trained" and out[0].startswith("ReplayedTask") and "replayed" in out[0], out
    assert len(_entries(path)) == 1


def test_ledger_failed_training_stays_accounted(tmp_path):
    """#14.3: a task that fails once DP-SGD has used the records keeps its reservation (a crash cannot hand the
    budget back). On main the entry was written only after training succeeded: a failure mid-training left no
    trace, so the same records could be trained on again for free."""
    ledger = PrivacyLedger(tmp_path / "ledger.json", budget=100.0, accountant="rdp")

    def crash(step, total, loss):
        raise KeyboardInterrupt("killed mid-training")

    with pytest.raises(KeyboardInterrupt):
        train_task(task(1, round=7), arrays(1), company_data(), ledger, crash)
    again = PrivacyLedger(tmp_path / "ledger.json", budget=100.0, accountant="rdp")
    assert [(e.round, e.block_index) for e in again.entries] == [(7, 1)]
    assert again.spent() > 0


def test_ledger_keyed_by_data_content_not_path(tmp_path):
    """#14.3: a copy of the data file under another name maps to the same ledger (and budget). On main the ledger
    was named by a hash of the path, so copying the file gave a fresh budget."""
    home = tmp_path / "home"
    original = save_company_data(tmp_path / "a" / "data.npz")
    copy = tmp_path / "b" / "renamed.npz"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    assert ledger_path(home, copy) == ledger_path(home, original)
    other = save_company_data(tmp_path / "c" / "data.npz", n=100)  # other records: another ledger
    assert ledger_path(home, other) != ledger_path(home, original)
    images = tmp_path / "images"
    for label in ("0", "1"):
        (images / label).mkdir(parents=True)
        (images / label / "x.png").write_bytes(bytes([int(label)]) * 64)
    shutil.copytree(images, tmp_path / "images-copy")
    assert ledger_path(home, tmp_path / "images-copy") == ledger_path(home, images)
