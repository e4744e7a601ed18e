"""Block architectures: shapes, independence of parameters, and Opacus per-sample gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from dblocks.shared.models import ArchConfig, TransformerClassifier, build_block, param_count
from dblocks.shared.schedule import NoiseSchedule

SCHED = NoiseSchedule(num_blocks=4)
ARCHS = {
    "image-classifier": ArchConfig(
        kind="classifier", input="image", num_classes=10, width=32, depth=2, heads=4, image_size=8, patch_size=2
    ),
    "tabular-classifier": ArchConfig(
        kind="classifier", input="tabular", num_classes=3, width=32, depth=2, heads=4, num_features=7
    ),
    "generator": ArchConfig(
        kind="generator", input="image", num_classes=10, width=32, depth=2, heads=4, image_size=8, patch_size=2
    ),
}


def batch(arch: ArchConfig, n: int, g: torch.Generator):
    if arch.input == "image":
        x = torch.randn(n, arch.image_channels, arch.image_size, arch.image_size, generator=g)
    else:
        x = torch.randn(n, arch.num_features, generator=g)
    y = torch.randint(0, arch.num_classes, (n,), generator=g)
    sigma = SCHED.sample_sigma(1, n, g)
    return x, y, sigma


def loss_per_example(block, fwd, x, y, sigma, g):
    """Deterministic per-example loss given fixed noise (the block loss with its randomness drawn outside)."""
    if block.arch.kind == "classifier":
        z = block.class_emb[y] + sigma[:, None] * torch.randn(len(y), block.arch.width, generator=g)
        return F.cross_entropy(fwd(x, z, sigma), y, reduction="none")
    z = x + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)
    return (fwd(z, sigma, y) - x).pow(2).flatten(1).mean(1)


def perturb(block):
    """Zero-initialised AdaLN modulation makes some gradients vanish at init; move off it."""
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return block


@pytest.mark.parametrize("name", list(ARCHS))
def test_block_forward_shapes_and_validator(name):
    arch = ARCHS[name]
    block = build_block(arch, SCHED)
    assert ModuleValidator.validate(block, strict=False) == []
    g = torch.Generator().manual_seed(0)
    x, y, sigma = batch(arch, 5, g)
    if arch.kind == "classifier":
        logits = block(x, torch.randn(5, arch.width), sigma)
        assert logits.shape == (5, arch.num_classes)
        d, _ = block.denoise(x, torch.randn(5, arch.width), sigma)
        assert d.shape == (5, arch.width)
        # the frozen class embedding is a buffer, not a parameter, and rows have the configured norm
        assert "class_emb" not in dict(block.named_parameters())
        torch.testing.assert_close(block.class_emb.norm(dim=1), torch.full((arch.num_classes,), arch.label_scale))
    else:
        assert block(x, sigma, y).shape == x.shape
        # AdaLN-Zero: a fresh generator block is the EDM skip path D = c_skip z
        c_skip = SCHED.precondition(sigma)[0].view(-1, 1, 1, 1)
        torch.testing.assert_close(block(x, sigma, y), c_skip * x)


def test_blocks_share_nothing_and_class_embedding_is_common():
    a, b = build_block(ARCHS["image-classifier"], SCHED), build_block(ARCHS["image-classifier"], SCHED)
    assert not set(map(id, a.parameters())) & set(map(id, b.parameters()))
    torch.testing.assert_close(a.class_emb, b.class_emb)  # same seeded target in every block


@pytest.mark.parametrize("name", list(ARCHS))
def test_opacus_per_sample_gradients_match_a_per_sample_loop(name):
    arch = ARCHS[name]
    torch.manual_seed(0)
    block = perturb(build_block(arch, SCHED))
    ref = copy.deepcopy(block)
    x, y, sigma = batch(arch, 6, torch.Generator().manual_seed(1))
    gsm = GradSampleModule(block, loss_reduction="sum")
    loss_per_example(block, gsm, x, y, sigma, torch.Generator().manual_seed(2)).sum().backward()
    noise_g = torch.Generator().manual_seed(2)
    # the per-example loop draws the same noise in the same order
    if arch.kind == "classifier":
        eps = torch.randn(6, arch.width, generator=noise_g)
    else:
        eps = torch.randn(x.shape, generator=noise_g)
    for i in range(6):
        ref.zero_grad()
        if arch.kind == "classifier":
            z = ref.class_emb[y[i : i + 1]] + sigma[i : i + 1, None] * eps[i : i + 1]
            F.cross_entropy(ref(x[i : i + 1], z, sigma[i : i + 1]), y[i : i + 1]).backward()
        else:
            z = x[i : i + 1] + sigma[i].view(1, 1, 1, 1) * eps[i : i + 1]
            (ref(z, sigma[i : i + 1], y[i : i + 1]) - x[i : i + 1]).pow(2).mean().backward()
        for (n, p), (_, q) in zip(block.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p.grad_sample[i], q.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("name", list(ARCHS))
def test_ghost_clipping_gives_the_clipped_mean_gradient(name):
    """Opacus ghost clipping (no noise) == mean of per-example gradients clipped to C, computed by a loop."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    arch, C, n = ARCHS[name], 0.05, 6
    torch.manual_seed(0)
    block = perturb(build_block(arch, SCHED))
    ref = copy.deepcopy(block)
    x, y, sigma = batch(arch, n, torch.Generator().manual_seed(1))
    gsm = GradSampleModuleFastGradientClipping(block, max_grad_norm=C, use_ghost_clipping=True)
    opt = DPOptimizerFastGradientClipping(
        torch.optim.SGD(block.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=n
    )
    losses = loss_per_example(block, gsm, x, y, sigma, torch.Generator().manual_seed(2))
    DPTensorFastGradientClipping(gsm, opt, losses, "mean").backward()
    opt.pre_step()
    want = [torch.zeros_like(p) for p in ref.parameters()]
    per = loss_per_example(ref, ref, x, y, sigma, torch.Generator().manual_seed(2))
    clipped_any = False
    for i in range(n):
        ref.zero_grad()
        per[i].backward(retain_graph=True)
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in ref.parameters()))
        clipped_any |= bool(norm > C)
        for w, p in zip(want, ref.parameters()):
            w += p.grad * min(1.0, C / (norm.item() + 1e-6)) / n
    assert clipped_any, "choose C so that clipping is active"
    for (name_, p), w in zip(block.named_parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=2e-3, atol=1e-6, msg=lambda m, name_=name_: f"{name_}: {m}")


def test_end_to_end_baseline_has_the_same_tokenizer_and_width():
    arch = ARCHS["image-classifier"].with_depth(8)
    model = TransformerClassifier(arch)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    one_block = build_block(ARCHS["image-classifier"].with_depth(2), SCHED)
    assert one_block.tokenizer.proj.weight.shape == model.tokenizer.proj.weight.shape
    # a plain layer has 8 d^2 weights, an AdaLN layer 14 d^2 (+6 d^2 modulation): one block of L/B = 2 layers
    # still holds about half the parameters of 8 plain layers; the memory win comes from activations
    d = 32
    assert param_count(one_block) < 2 * 14 * d * d + 6 * d * d + 4000
