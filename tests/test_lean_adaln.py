"""The memory-lean AdaLN-Zero layer computes what the plain autograd formula computes, and saves less."""

import torch
import torch.nn.functional as F

from dblocks.shared.models import AdaLNLayer, _GatedResidual, _ModulatedNorm, modulate


def reference(layer: AdaLNLayer, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """h += g1 Attn(LN(h)(1+s1)+b1); h += g2 MLP(LN(h)(1+s2)+b2), written with plain autograd ops."""
    sh1, sc1, g1, sh2, sc2, g2 = layer.ada(F.silu(c)).chunk(6, dim=-1)
    ln = lambda t: F.layer_norm(t, (t.shape[-1],), eps=layer.eps)  # noqa: E731
    h = h + g1.unsqueeze(1) * layer.attn(modulate(ln(h), sh1, sc1))
    return h + g2.unsqueeze(1) * layer.mlp(modulate(ln(h), sh2, sc2))


def saved_bytes(fn) -> tuple[torch.Tensor, int]:
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_lean_layer_matches_plain_autograd_and_saves_four_fewer_activations():
    g = torch.Generator().manual_seed(0)
    b, t, d = 16, 10, 32
    layer = AdaLNLayer(d, 4, 2.0)
    with torch.no_grad():  # off the zero init, so every gradient is non-trivial
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    h0, c0 = torch.randn(b, t, d, generator=g), torch.randn(b, d, generator=g)
    grads = []
    for fn in (lambda h, c: layer(h, c), lambda h, c: reference(layer, h, c)):
        layer.zero_grad()
        h, c = h0.clone().requires_grad_(), c0.clone().requires_grad_()
        out, nbytes = saved_bytes(lambda fn=fn, h=h, c=c: fn(h, c))
        (out * torch.linspace(-1, 1, d)).sum().backward()
        grads.append((out.detach(), h.grad, c.grad, [p.grad.clone() for p in layer.parameters()], nbytes))
    (o1, gh1, gc1, gp1, lean), (o2, gh2, gc2, gp2, plain) = grads
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(gh1, gh2)
    torch.testing.assert_close(gc1, gc2)
    for a, r in zip(gp1, gp2):
        torch.testing.assert_close(a, r)
    # LN(h) twice and the two sub-layer outputs are no longer kept: 4 x [B, T, d] float32
    assert plain - lean >= 4 * b * t * d * 4


def test_lean_functions_pass_gradcheck():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    shift, scale = (torch.randn(3, 6, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda a, b, c: _ModulatedNorm.apply(a, b, c, 1e-6), (h, shift, scale))
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    gate = torch.randn(3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    # y = x W^T + b built outside; gradients to x, W, b flow through y only
    assert torch.autograd.gradcheck(
        lambda h_, g_, x_, w_, b_: _GatedResidual.apply(h_, g_, F.linear(x_, w_, b_), x_, w_, b_), (h, gate, x, w, bias)
    )
