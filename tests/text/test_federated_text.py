"""One federated round of masked-diffusion text blocks, end to end: DP-SGD per company, its ledger, the clipped
delta, dblocks' SecAgg+ and the global update (bench/text_federated.py's TextFederation on a tiny model)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from text_federated import (  # noqa: E402
    FedTextSetting,
    TextFederation,
    assign_sources,
    flat_params,
    records_of,
)

from dblocks.shared import text_mdm as mdm  # noqa: E402
from dblocks.shared.text import Document  # noqa: E402

TINY = mdm.Config(seq_len=16, total_layers=3, num_blocks=3, width=16, heads=2, mlp_ratio=2, eval_points=3)


def company_docs(i: int) -> list[Document]:
    """Each company's own 'source': distinct text, so the shards differ."""
    line = f"def company_{i}(x):\n    return x * {i} + {i * i}  # record {i}\n".encode()
    return [Document(f"c{i}/d{j}.py", f"pkg{i}", line * (8 + j)) for j in range(3)]


def test_sources_are_dealt_whole_and_records_are_windows():
    docs = [d for i in range(4) for d in company_docs(i)]
    held = assign_sources(docs, 2)
    assert sorted(s for h in held for s in h) == ["pkg0", "pkg1", "pkg2", "pkg3"]
    assert all(len(h) == 2 for h in held)  # equal sizes alternate between the two companies
    rec = records_of(company_docs(0), 16)
    assert rec.shape[1] == 16 and rec.dtype == torch.long
    assert len(rec) == sum(len(d.data) // 16 for d in company_docs(0))
    with pytest.raises(ValueError):
        assign_sources(docs, 5)  # 4 sources cannot give 5 companies whole sources


def test_one_round_with_dp_and_secagg_aggregates_the_clipped_deltas(tmp_path):
    torch.manual_seed(0)
    model = mdm.build(TINY, end_to_end=False, seed=0)
    before = [flat_params(d) for d in model.denoisers]
    companies = {f"company{i:02d}": records_of(company_docs(i), TINY.seq_len) for i in range(3)}
    s = FedTextSetting(
        rounds=1,
        steps=2,
        sample_rate=0.1,
        lr=1e-2,
        record_noise=2.0,  # with q = 0.1 the RDP accountant answers in ~0.1 s (q = 0.5: ~1 s a call)
        record_clip=1.0,
        update_clip=0.05,  # small enough to bite: the deltas are clipped before SecAgg
        cohort_size=3,
    )
    fed = TextFederation(model, TINY, companies, s, seed=0, workdir=tmp_path, keep_updates=True)
    rep = fed.round(1)

    assert len(rep.aggregates) == 1  # 3 companies, a cohort of 3: one block per round
    ((b, agg),) = rep.aggregates.items()
    assert sorted(rep.cohorts[b]) == sorted(companies) and agg.count == 3
    clipped = [rep.updates[(b, cid)].clipped for cid in rep.cohorts[b]]
    assert all(np.linalg.norm(c) <= s.update_clip * (1 + 1e-9) for c in clipped)
    assert any(rep.updates[(b, cid)].norm_before_clip > s.update_clip for cid in rep.cohorts[b])
    # the unmasked mean is the mean of the clipped deltas within SecAgg's quantisation bound
    mean = np.mean(clipped, axis=0)
    err = np.max(np.abs(agg.mean_update - mean))
    assert err <= agg.error_bound / agg.count + 1e-12
    assert np.max(np.abs(mean)) > 100 * err  # and the comparison is not vacuous
    # the server added exactly that mean (no central noise, server lr 1) to that block, nothing to the others
    for k, d in enumerate(model.denoisers):
        moved = flat_params(d) - before[k]
        if k == int(b):
            np.testing.assert_allclose(moved, agg.mean_update, atol=1e-6)
        else:
            assert not moved.any()
    # every company's ledger holds its one release, composed by the RDP accountant
    for led in fed.ledgers.values():
        assert [(e.round, e.block_index, e.status) for e in led.entries] == [(1, int(b), "released")]
    assert 0 < fed.epsilon() < math.inf
