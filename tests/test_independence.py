"""Each block trains alone: no other block exists on disk or in memory while it trains."""

import json
import subprocess
import sys

import torch

SCRIPT = r"""
import gc, json, sys
from dataclasses import replace
from pathlib import Path
import torch
from dblocks.shared.models import DenoisingClassifier
from dblocks.shared.presets import get_preset
from dblocks.shared.workflow import train_diffusion_blocks

out = Path(sys.argv[1])
p = get_preset("digits")
train, _ = p.load_split()
live = []
def progress(block, step, total, loss):
    if step % 5 == 0:
        live.append(sum(isinstance(o, DenoisingClassifier) for o in gc.get_objects()))
train_diffusion_blocks(p, p.noise_schedule(4), train, replace(p.train, epochs=1), out, blocks=[2], progress=progress)
print(json.dumps({"live": live}))
"""


def test_one_block_trains_with_no_other_block_present(tmp_path):
    out = tmp_path / "model"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    live = json.loads(r.stdout.strip().splitlines()[-1])["live"]
    assert live and max(live) == 1  # exactly one block object alive during training
    files = sorted(p.name for p in out.iterdir())
    assert files == ["block-2.json", "block-2.safetensors", "model.json"]


def test_training_a_block_touches_only_its_own_parameters():
    from dblocks.shared.models import build_block
    from dblocks.shared.presets import get_preset
    from dblocks.shared.training import per_sample_loss

    p = get_preset("digits")
    sched, arch = p.noise_schedule(4), p.block_arch(4)
    blocks = [build_block(arch, sched) for _ in range(4)]
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    per_sample_loss(blocks[1], 1, x, y).mean().backward()
    assert all(q.grad is None for i in (0, 2, 3) for q in blocks[i].parameters())
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in blocks[1].parameters())
