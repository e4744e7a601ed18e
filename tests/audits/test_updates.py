import math

import pytest
import torch

from dblocks.privacy.attacks.updates import (
    BlockUpdate,
    UpdateMeta,
    check_update_matches,
    clip_delta,
    flatten,
    load_update,
    parameter_keys,
    release,
    release_meta,
    save_update,
)


def _delta(block, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v.shape, generator=g) for k, v in block.state_dict().items()}


def test_update_file_roundtrip(tmp_path, trained_blocks):
    block = trained_blocks["classifier"]
    meta = UpdateMeta(block_index=1, noise_interval=(0.1, 0.5), observation="clipped", clip_norm=1.0)
    upd = BlockUpdate(clip_delta(_delta(block), 1.0)[0], meta)
    save_update(tmp_path / "u.safetensors", upd)
    back = load_update(tmp_path / "u.safetensors")
    assert back.meta == meta
    assert torch.equal(flatten(back.delta), flatten(upd.delta))
    assert math.isclose(back.norm(), 1.0, rel_tol=1e-5)
    check_update_matches(back, block)


def test_update_for_another_block_is_rejected(trained_blocks):
    upd = BlockUpdate(_delta(trained_blocks["generator"]), UpdateMeta(1, (0.1, 0.5), "raw"))
    with pytest.raises(ValueError, match="does not fit the block"):
        check_update_matches(upd, trained_blocks["classifier"])


def test_missing_sidecar_names_both_files(tmp_path, trained_blocks):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "u.safetensors"))
    with pytest.raises(FileNotFoundError, match="sidecar|json"):
        load_update(tmp_path / "u.safetensors")


def test_release_noise_is_sized_on_the_clients_aggregated(trained_blocks):
    block = trained_blocks["classifier"]
    keys = parameter_keys(block)
    deltas = [_delta(block, i, scale=0.0) for i in range(4)]  # no signal: the release is pure noise
    rel = release(
        deltas, clip_norm=2.0, noise_multiplier=1.5, generator=torch.Generator().manual_seed(0), noise_keys=keys
    )
    std = float(flatten(rel, keys).std())
    assert abs(std - 1.5 * 2.0 / 4) / (1.5 * 2.0 / 4) < 0.02
    assert float(rel["class_emb"].abs().max()) == 0  # buffers get no noise
    meta = release_meta(UpdateMeta(1, (0.1, 0.5), "release"), 2.0, 4, 1.5)
    assert meta.central_noise_std == pytest.approx(0.75) and meta.reduction == "mean"


def test_dp_local_update_is_clipped_and_carries_its_accounting(trained_blocks, digits):
    from dblocks.privacy.attacks.updates import dp_local_update
    from dblocks.privacy.dpsgd import DPConfig
    from dblocks.shared.training import TrainConfig

    block = trained_blocks["classifier"]
    before = {k: v.clone() for k, v in block.state_dict().items()}
    delta, report = dp_local_update(
        block,
        1,
        digits.x[:128],
        digits.y[:128],
        TrainConfig(epochs=1, lr=1e-2),
        DPConfig(noise_multiplier=1.0, batch_size=32, steps=5),
        clip_norm=0.01,
    )
    assert math.isclose(float(flatten(delta).norm()), 0.01, rel_tol=1e-4)  # the DP noise alone exceeds the clip
    assert report["steps"] == 5 and report["sample_rate"] == 0.25 and math.isfinite(report["epsilon"])
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
    assert float(delta["class_emb"].abs().max()) == 0
