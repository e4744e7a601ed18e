import json

import pytest
import torch
from safetensors.torch import save as st_save

from dblocks.shared.models import ArchConfig, build_block
from dblocks.shared.schedule import NoiseSchedule
from dblocks.shared.wire import BlockIntegrityError, BlockSpec, load_block, pack_block, save_block, unpack_block

SCHED = NoiseSchedule(num_blocks=3, gamma=0.1)
ARCH = ArchConfig(
    kind="classifier", input="image", num_classes=10, width=32, depth=1, heads=4, image_size=8, patch_size=2
)


def test_round_trip_preserves_spec_and_function(tmp_path):
    torch.manual_seed(0)
    block = build_block(ARCH, SCHED)
    spec, data = pack_block("digits", SCHED, 2, block)
    assert spec.owned_interval == SCHED.owned_interval(2) and spec.training_interval == SCHED.training_interval(2)
    assert spec.param_count == sum(p.numel() for p in block.parameters())
    save_block(tmp_path, spec, data)
    spec2, block2 = load_block(tmp_path, 2)
    assert spec2 == spec and BlockSpec.from_json(spec.to_json()) == spec
    x, z, s = torch.randn(4, 1, 8, 8), torch.randn(4, 32), torch.full((4,), 0.1)
    torch.testing.assert_close(block2(x, z, s), block(x, z, s))
    # packing is deterministic: the same weights always give the same hash
    assert pack_block("digits", SCHED, 2, block2)[0].sha256 == spec.sha256


def test_tampered_bytes_are_refused():
    spec, data = pack_block("digits", SCHED, 0, build_block(ARCH, SCHED))
    bad = bytearray(data)
    bad[-3] ^= 0xFF
    with pytest.raises(BlockIntegrityError, match="sha256"):
        unpack_block(spec, bytes(bad))


def test_wrong_shape_or_dtype_with_a_matching_hash_is_refused():
    block = build_block(ARCH, SCHED)
    spec, _ = pack_block("digits", SCHED, 0, block)
    state = {k: v.clone() for k, v in block.state_dict().items()}
    state["head.weight"] = torch.zeros(11, 32)
    data = st_save(state)
    forged = BlockSpec(**{**spec.__dict__, "sha256": __import__("hashlib").sha256(data).hexdigest()})
    with pytest.raises(BlockIntegrityError, match=r"head.weight.*shape \[11, 32\]"):
        unpack_block(forged, data)
    state["head.weight"] = block.state_dict()["head.weight"].double()
    data = st_save(state)
    forged = BlockSpec(**{**spec.__dict__, "sha256": __import__("hashlib").sha256(data).hexdigest()})
    with pytest.raises(BlockIntegrityError, match="dtype"):
        unpack_block(forged, data)
    del state["head.weight"]
    data = st_save(state)
    forged = BlockSpec(**{**spec.__dict__, "sha256": __import__("hashlib").sha256(data).hexdigest()})
    with pytest.raises(BlockIntegrityError, match="missing"):
        unpack_block(forged, data)


def test_missing_block_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="block-1"):
        load_block(tmp_path, 1)


def test_unknown_format_version_is_refused():
    spec, _ = pack_block("digits", SCHED, 0, build_block(ARCH, SCHED))
    d = json.loads(spec.to_json())
    d["format_version"] = 99
    with pytest.raises(BlockIntegrityError, match="format"):
        BlockSpec.from_json(json.dumps(d))
