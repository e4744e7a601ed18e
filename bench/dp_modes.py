"""CPU cost of Opacus' two exact per-example clippings on a company's task (privacy/dpsgd.py `grad_sample_mode_for`).

One company of the demo (`dbserver demo`: mnist-fed, B = 2, MNIST slice of LocalFederation.company_data(6), 15
DP-SGD steps at q = 0.5, z = 1.92, C = 1), one thread, each block and trained subset with "hooks" (per-example
gradients, one backward pass) and "ghost" (ghost clipping, a second backward pass): process CPU seconds of
`train_block_dp`. Both clip every example before the same noise; only the cost differs. Writes
bench/results/dp_modes.json (no summary keys).

    OMP_NUM_THREADS=1 .venv/bin/python bench/dp_modes.py
"""

from __future__ import annotations

import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, setup, write_json  # noqa: E402

from dblocks.privacy.dpsgd import DPConfig, freeze_except, grad_sample_mode_for, train_block_dp  # noqa: E402
from dblocks.server.federation.model_state import GlobalModel  # noqa: E402
from dblocks.server.ops.localfed import LocalFederation  # noqa: E402
from dblocks.shared.data import load_npz  # noqa: E402
from dblocks.shared.presets import get_preset  # noqa: E402
from dblocks.shared.training import TrainConfig  # noqa: E402


def main() -> None:
    env = setup(1)
    _, paths, _ = LocalFederation(Path(tempfile.mkdtemp())).company_data(6, public=1000, alpha=0.5)
    data = load_npz(paths[0])
    preset = get_preset("mnist-fed")
    model = GlobalModel.initial(preset, preset.noise_schedule(2), 0)
    q, steps = 0.5, 15
    rows = []
    for b in (0, 1):
        for which in ("input+bias", "all"):
            for mode in ("hooks", "ghost"):
                block = copy.deepcopy(model.blocks[b].module)
                trained = freeze_except(block, which)
                dp = DPConfig(
                    noise_multiplier=1.92,
                    max_grad_norm=1.0,
                    batch_size=q * len(data),
                    steps=steps,
                    accountant="rdp",
                    grad_sample_mode=mode,
                )
                cfg = TrainConfig(epochs=1, lr=1e-2, weight_decay=0.0, warmup=0.0, decay=False, grad_clip=math.inf)
                t = time.process_time()
                train_block_dp(block, b, data.x, data.y, cfg, dp, generator=torch.Generator().manual_seed(0))
                row = {
                    "block": b,
                    "trained": which,
                    "values": trained,
                    "mode": mode,
                    "cpu_seconds": round(time.process_time() - t, 2),
                    "chosen": grad_sample_mode_for(block, which, q * len(data)) == mode,
                }
                rows.append(row)
                print(row, flush=True)
    write_json(
        RESULTS / "dp_modes.json",
        {"setup": env, "records": len(data), "q": q, "steps": steps, "rows": rows},
    )


if __name__ == "__main__":
    main()
