"""The client's local training as a differentiable function of its records and noise draws.

`simulate_update` runs `steps` full-batch steps of SGD or Adam on the block loss of the given inputs (one
`BlockInputs` per step: each step draws fresh sigma and eps) from the received parameters and returns the
parameter delta. The local producer and the gradient-matching attacks share it, so an attack models exactly the
update it is given; `create_graph=True` keeps the graph for differentiating the delta w.r.t. the inputs.

Adam's denominator is sqrt(v_hat + eps^2) (instead of sqrt(v_hat) + eps) so that second derivatives stay finite
where a coordinate's gradient is exactly zero.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from dblocks.shared.models import twice_differentiable
from dblocks.shared.training import BlockInputs, ClassifierWeighting, block_loss, draw_block_inputs

from .updates import Delta


@dataclass(frozen=True)
class LocalTraining:
    """steps full-batch steps of `optimizer` (sgd | adam) at learning rate lr on the client's records."""

    steps: int = 1
    lr: float = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"
    weighting: ClassifierWeighting = "none"
    label_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"bad local training {self}: need steps >= 1, lr > 0, optimizer sgd|adam")

    def to_dict(self) -> dict:
        return asdict(self)


def trainable(block: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in block.named_parameters()}


def simulate_update(
    block: nn.Module,
    params: dict[str, torch.Tensor],
    step_inputs: list[BlockInputs],
    training: LocalTraining,
    *,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Parameter delta after len(step_inputs) local steps from `params` (one BlockInputs per step)."""
    buffers = dict(block.named_buffers())
    names = list(params)
    delta = {n: torch.zeros_like(p) for n, p in params.items()}  # accumulated steps, never re-derived by subtraction
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, inputs in enumerate(step_inputs, start=1):
        live = {n: params[n].detach() + delta[n] if t > 1 else params[n].detach() for n in names}
        # differentiate w.r.t. the current weights; keep their graph to the attacker's unknowns when asked
        live = {
            n: p if (create_graph and p.requires_grad) else p.detach().requires_grad_(True) for n, p in live.items()
        }

        def forward(*args, _p=live):
            return functional_call(block, {**_p, **buffers}, args)

        with twice_differentiable() if create_graph else contextlib.nullcontext():
            loss = block_loss(block, inputs, weighting=training.weighting, forward=forward).mean()
        grads = torch.autograd.grad(loss, [live[n] for n in names], create_graph=create_graph, allow_unused=True)
        for n, g in zip(names, grads):
            g = torch.zeros_like(params[n]) if g is None else g
            if training.optimizer == "sgd":
                delta[n] = delta[n] - training.lr * g
            else:
                m[n] = b1 * m[n] + (1 - b1) * g
                v[n] = b2 * v[n] + (1 - b2) * g * g
                m_hat, v_hat = m[n] / (1 - b1**t), v[n] / (1 - b2**t)
                delta[n] = delta[n] - training.lr * m_hat / torch.sqrt(v_hat + eps * eps)
    return delta


def local_update(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    training: LocalTraining,
    generator: torch.Generator,
) -> tuple[Delta, list[BlockInputs]]:
    """A client's raw update on records (x, y) (no DP): the state-dict delta and the noise draws of every step.

    The delta is the sum of the optimizer's steps (float32), as a client that accumulates its update sends it;
    re-deriving it as float32(trained) - float32(received) would round away whatever lies below the weights'
    precision (a loss of bits an attacker cannot count on being there). Buffers have a zero delta."""
    draws = [
        draw_block_inputs(block, block_index, x, y, generator=generator, label_dropout=training.label_dropout)
        for _ in range(training.steps)
    ]
    with torch.enable_grad():
        delta = simulate_update(block, trainable(block), draws, training)
    out = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in block.state_dict().items()}
    out.update({k: v.detach().float() for k, v in delta.items()})
    return out, draws
