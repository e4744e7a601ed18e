"""Issue #16 product settings: the trainable-parameter subset a company trains, and the server's momentum."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dblocks.client.ledger import PrivacyLedger
from dblocks.client.trainer import train_task
from dblocks.privacy.dpsgd import trainable_names
from dblocks.server.federation.model_state import GlobalModel, momentum_step
from dblocks.shared.data import load_builtin
from dblocks.shared.fedmsg import TRAINABLE, BlockTask, param_names
from dblocks.shared.presets import get_preset


def _task(model, **kw):
    base = dict(
        run_id="r",
        round=1,
        block_index=0,
        attempt=0,
        spec_json=model.blocks[0].spec.to_json(),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.2,
        steps=3,
        delta=1e-5,
        accountant="rdp",
        lr=1e-2,
        weight_decay=0.0,
        update_clip=100.0,
    )
    return BlockTask(**{**base, **kw})


@pytest.mark.parametrize("which", ["bias", "bias+head"])
def test_client_trains_only_the_tasks_trainable_subset(tmp_path, which):
    p = get_preset("digits")
    model = GlobalModel.initial(p, p.noise_schedule(2), seed=0)
    data = load_builtin("digits").subset(np.arange(100))
    upd = train_task(
        _task(model, trainable=which), model.weights_arrays(0), data, PrivacyLedger(tmp_path / "l.json", budget=50.0)
    )
    keep = set(trainable_names(model.blocks[0].module, which))
    names = param_names(model.blocks[0].module)
    assert keep and len(keep) < len(names)
    for name, d in zip(names, upd.delta):
        if name in keep:
            assert np.abs(d).max() > 0, name  # trained (with DP noise every trained value moves)
        else:
            assert not np.any(d), name  # frozen: exactly the server's values
    assert all(q.requires_grad for q in model.blocks[0].module.parameters())


def test_trainable_is_validated_and_optional_on_the_wire():
    p = get_preset("digits")
    model = GlobalModel.initial(p, p.noise_schedule(2), seed=0)
    assert "all" in TRAINABLE and _task(model).trainable == "all"
    with pytest.raises(ValueError, match="trainable"):
        _task(model, trainable="everything")
    cfg = _task(model, trainable="bias").to_config()
    assert BlockTask.from_config(cfg).trainable == "bias"
    del cfg["trainable"]  # an older server: all parameters
    assert BlockTask.from_config(cfg).trainable == "all"


def test_server_momentum_is_heavy_ball_on_the_released_means():
    v = {}
    a = momentum_step(v, 0, [np.array([1.0, -2.0])], 0.5)
    b = momentum_step(v, 0, [np.array([1.0, 0.0])], 0.5)
    c = momentum_step(v, 1, [np.array([3.0, 3.0])], 0.5)  # blocks keep their own velocity
    np.testing.assert_allclose(a[0], [1.0, -2.0])
    np.testing.assert_allclose(b[0], [1.5, -1.0])
    np.testing.assert_allclose(c[0], [3.0, 3.0])


def test_the_servers_release_steps_with_momentum_across_rounds(tmp_path):
    from dblocks.server.federation.aggregation import AggregateOutcome
    from dblocks.server.federation.config import RunConfig
    from dblocks.server.federation.releases import ReleaseLog
    from dblocks.server.federation.strategy import BlockStrategy

    with pytest.raises(ValueError, match="server_momentum"):
        RunConfig(run_id="r", server_momentum=1.0)
    preset = get_preset("digits")
    model = GlobalModel.initial(preset, preset.noise_schedule(2), 0)
    cfg = RunConfig(run_id="r", task="digits", num_blocks=2, server_momentum=0.5, update_clip=10.0)
    strategy = BlockStrategy(cfg, model, ReleaseLog(tmp_path / "releases.json"), 0, lambda: 2)
    shapes = model.param_shapes(0)
    theta0 = [p.detach().clone() for p in model.blocks[0].module.parameters()]
    mean = [np.full(sh, 1e-3, dtype=np.float32) for sh in shapes]
    releases = strategy.releases
    for r in (1, 2):
        releases.trained(r, 0, 0, [1, 2, 3], strategy.configure(r, 0).mechanism)
        strategy.release(r, 0, AggregateOutcome(0, [1, 2, 3], mean=mean, survivors=[1, 2, 3]))
    # theta += m1 + (0.5 m1 + m2) = 2.5e-3 on every value (no central noise)
    moved = [(p.detach() - t).flatten() for p, t in zip(model.blocks[0].module.parameters(), theta0)]
    np.testing.assert_allclose(torch.cat(moved).numpy(), 2.5e-3, rtol=1e-3)


def test_run_config_validates_trainable_and_the_server_sends_it():
    from dblocks.server.federation.config import RunConfig

    assert RunConfig(run_id="r", min_cohort=3).trainable == "all"
    with pytest.raises(ValueError, match="trainable"):
        RunConfig(run_id="r", min_cohort=3, trainable="weights")
    import dblocks.server.federation as fed

    # the task the server builds carries the run's setting (serverapp.py, or strategy.py after the refactor)
    assert any("trainable=c.trainable" in f.read_text() for f in Path(fed.__file__).parent.glob("*.py"))


def test_the_cheaper_exact_clipping_is_chosen_by_the_size_of_the_per_example_gradients():
    """#17: Opacus' per-example gradients ("hooks", one backward pass) while they fit in PER_EXAMPLE_GRADIENTS_MB,
    ghost clipping (memory independent of the batch) beyond; and both clip each example before the noise: with
    zero noise and a clip that binds, three AdamW steps of either move the block by the same amount (float32
    rounding apart; after its first step AdamW depends on the gradients' magnitudes, not only their signs)."""
    from dblocks.privacy.dpsgd import PER_EXAMPLE_GRADIENTS_MB, DPConfig, grad_sample_mode_for, train_block_dp
    from dblocks.shared.training import TrainConfig

    p = get_preset("digits")
    block = GlobalModel.initial(p, p.noise_schedule(2), seed=0).blocks[0].module
    values = sum(q.numel() for q in block.parameters())
    fits = PER_EXAMPLE_GRADIENTS_MB * 2**20 / (4 * values)  # the largest batch whose gradients of all values fit
    assert grad_sample_mode_for(block, "all", 0.9 * fits) == "hooks"
    assert grad_sample_mode_for(block, "all", 1.1 * fits) == "ghost"
    assert grad_sample_mode_for(block, "bias", 1.1 * fits) == "hooks"  # far fewer values trained
    assert grad_sample_mode_for(block, "bias", 1.1 * fits, memory_limited=True) == "ghost"

    data = load_builtin("digits").subset(np.arange(64))
    moved = {}
    for mode in ("hooks", "ghost"):
        b = GlobalModel.initial(p, p.noise_schedule(2), seed=0).blocks[0].module
        before = [q.detach().clone() for q in b.parameters()]
        dp = DPConfig(noise_multiplier=0.0, max_grad_norm=0.01, batch_size=32, steps=3, grad_sample_mode=mode)
        cfg = TrainConfig(epochs=1, lr=1e-2, weight_decay=0.0, warmup=0.0, decay=False)
        train_block_dp(b, 0, data.x, data.y, cfg, dp, generator=torch.Generator().manual_seed(3))
        moved[mode] = torch.cat([(q.detach() - w).flatten() for q, w in zip(b.parameters(), before)])
    assert moved["hooks"].abs().max() > 0
    assert torch.allclose(moved["hooks"], moved["ghost"], atol=2e-5), (moved["hooks"] - moved["ghost"]).abs().max()
