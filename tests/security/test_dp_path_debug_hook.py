"""#14 low: the test-only hook that wrote each company's clipped delta to disk when an environment variable was
set (client/trainer.py `_debug_record`) is gone from the product; tests record updates with their own wrapper
(tests/federation/update_recorder.py)."""

from __future__ import annotations

import importlib
from pathlib import Path

from dblocks.client.ledger import PrivacyLedger
from dblocks.client.trainer import train_task

from ._dp_path_common import arrays, company_data, task


def test_no_test_hook_in_production_trainer(tmp_path, monkeypatch):
    """#14 low: on main, with DBLOCKS_TEST_DEBUG_DIR set, train_task saved the company's clipped delta to that
    folder (an environment variable could make the product keep per-company updates on disk)."""
    debug = tmp_path / "debug"
    monkeypatch.setenv("DBLOCKS_TEST_DEBUG_DIR", str(debug))
    train_task(task(1), arrays(1), company_data(), PrivacyLedger(tmp_path / "ledger.json", budget=50.0))
    assert not debug.exists() or not any(debug.iterdir()), sorted(debug.iterdir())
    product = [
        p
        for sub in ("client", "privacy", "server", "shared")
        for p in Path(importlib.import_module(f"dblocks.{sub}").__path__[0]).rglob("*.py")
    ]
    assert len(product) > 20
    # no environment variable of the tests switches anything in the product
    assert not [str(p) for p in product if "DBLOCKS_TEST_" in p.read_text()]
