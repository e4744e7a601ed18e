"""Small blocks on real digits for fast leakage-audit tests."""

import pytest
import torch

from dblocks.shared.data import load_builtin
from dblocks.shared.models import ArchConfig, build_block
from dblocks.shared.schedule import NoiseSchedule
from dblocks.shared.training import TrainConfig, train_block

SCHEDULE = NoiseSchedule(num_blocks=3)


def tiny_arch(kind: str) -> ArchConfig:
    # width 32 > 16 patch tokens of an 8x8 digit with 2x2 patches (the closed form solves for the patches)
    return ArchConfig(kind=kind, input="image", num_classes=10, width=32, depth=1, heads=2, image_size=8, patch_size=2)


@pytest.fixture(scope="session")
def digits():
    return load_builtin("digits")


@pytest.fixture(scope="session")
def trained_blocks(digits):
    """{kind: block trained for a few steps (non-zero AdaLN gates) on block 1 of 3}."""
    out = {}
    for kind in ("classifier", "generator"):
        torch.manual_seed(0)
        block = build_block(tiny_arch(kind), SCHEDULE)
        train_block(block, 1, digits.x[:256], digits.y[:256], TrainConfig(epochs=2, batch_size=32, lr=3e-3, seed=0))
        out[kind] = block.eval()
    return out


@pytest.fixture
def fresh_block():
    """A freshly initialised tiny block of the given kind (zero AdaLN gates)."""

    def make(kind: str = "classifier"):
        torch.manual_seed(0)
        return build_block(tiny_arch(kind), SCHEDULE)

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Batch-1 attacks are latency-bound: one intra-op thread is faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
