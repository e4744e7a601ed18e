"""#14 low: `--memory-limit` is enforced at the company: a block that does not fit is refused before any record
is used or anything is spent, through the ClientApp's own training step."""

from __future__ import annotations

import json

import pytest

from dblocks.client.clientapp import train_block

from ._dp_path_common import arrays, company_data, save_company_data, task


def _node_config(tmp_path, memory_mb: float) -> dict:
    data = save_company_data(tmp_path / "data.npz")
    return {
        "data-path": str(data),
        "ledger-path": str(tmp_path / "ledger.json"),
        "progress-path": str(tmp_path / "progress.log"),
        "epsilon-budget": 50.0,
        "memory-mb": memory_mb,
        "threads": 1,
    }


def test_memory_limit_is_enforced_at_the_company(tmp_path):
    """#14 low: on main `memory-mb` was only reported in the ping: a company allowing 4 MB trained a block that
    needs about 16 MB and recorded it in its ledger. Now the task is refused with a message naming the limit,
    and the ledger stays untouched."""
    nc = _node_config(tmp_path, memory_mb=4.0)
    with pytest.raises(RuntimeError, match=r"allows 4 MB \(--memory-limit\)"):
        train_block(nc, task(1, sample_rate=0.1), arrays(1))
    ledger = tmp_path / "ledger.json"
    assert not ledger.exists() or json.loads(ledger.read_text())["entries"] == []
    assert "REFUSED" in (tmp_path / "progress.log").read_text()
    # the estimate (client/memory.py) holds the state and grows with the Poisson batch; above it the block trains
    from dblocks.client.memory import training_memory
    from dblocks.client.trainer import rebuild_block

    block, data = rebuild_block(task(1), arrays(1)), company_data()
    low, high = (training_memory(block, 1, data.x, data.y, q) for q in (0.1, 0.5))
    assert low.state_bytes == high.state_bytes >= 4 * sum(p.numel() * p.element_size() for p in block.parameters())
    assert high.batch > low.batch >= 12 and high.mb > low.mb > 4.0
    nc["memory-mb"] = 64.0
    update = train_block(nc, task(1, sample_rate=0.1), arrays(1))
    assert update.epsilon_after > 0 and len(json.loads((tmp_path / "ledger.json").read_text())["entries"]) == 1
