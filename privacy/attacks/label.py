"""Label inference from a classification block's update, with the chance level a blind guess reaches.

Single record (one SGD step, delta = -s grad with s > 0 the lr times any clip factor):
  * head bias: dL/db = w(sigma) (softmax - onehot(y)); the only negative gradient entry, i.e. the only positive
    delta entry, is y (iDLG): label = argmax_c delta_bias[c].
  * class-embedding input: the label token reads c_in z with z = E[y] + sigma eps, so the label_in gradient is
    rank one, g (c_in z)^T; its top right singular vector gives z (closed form) and the label is the nearest class
    embedding, argmax_c <z, E_c> (every E_c has the same norm).
Sums of n records (label counts): the head-bias delta of a sum is sum_i s_i w_i (p_i - e_{y_i}) (times -1). With
class profiles mu_c = E[-(w (p - e_c)) | y = c] measured on the attacker's own records of class c (at drawn
sigma and eps), the counts are fitted greedily: add one record of the class c that minimises
min_{a > 0} ||delta_bias - a M (n + e_c)||^2, until n records are placed.

Chance: a blind guesser knows the class prior p (the pool's label frequencies). One record: max_c p_c. n records
(multiset overlap / n): the guess G maximising E[sum_c min(A_c, G_c)], A_c ~ Binomial(n, p_c), built greedily
from the marginal gains P(A_c >= G_c + 1) (decreasing in G_c, so greedy is optimal).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import binom
from torch import nn

from dblocks.shared.models import DenoisingClassifier, as_block
from dblocks.shared.training import draw_block_inputs

from .closed_form import rank1_input
from .updates import Delta


def _classifier(block: nn.Module) -> DenoisingClassifier:
    b = as_block(block)
    if not isinstance(b, DenoisingClassifier):
        raise TypeError("label inference attacks classification blocks")
    return b


def label_from_head_bias(delta: Delta) -> int:
    """The single record's label: the largest head-bias delta entry (descent raises the true class's bias)."""
    return int(delta["head.bias"].double().argmax())


def label_from_class_embedding(block: nn.Module, delta: Delta) -> int:
    """The single record's label: the class embedding nearest the noisy z recovered from label_in's gradient."""
    b = _classifier(block)
    z_scaled, _ = rank1_input(-delta["label_in.weight"].double(), -delta["label_in.bias"].double())
    if not bool(torch.isfinite(z_scaled).all()):
        return 0
    return int((b.class_emb.double() @ z_scaled).argmax())  # c_in > 0 does not change the argmax


def class_profiles(
    block: nn.Module, block_index: int, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """M [classes, classes]: column c = mean head-bias descent direction -w (softmax - onehot(c)) of the attacker's
    records of class c at freshly drawn (sigma, eps) (a forward pass only: the head bias gradient is exact)."""
    b = _classifier(block)
    k = b.arch.num_classes
    inputs = draw_block_inputs(block, block_index, x, y, generator=generator)
    with torch.no_grad():
        p = b(inputs.x, inputs.z, inputs.sigma).double().softmax(-1)
    d = torch.nn.functional.one_hot(y, k).double() - p  # -grad of CE w.r.t. the bias (weighting "none")
    m = torch.zeros(k, k, dtype=torch.float64)
    for c in range(k):
        if bool((y == c).any()):
            m[:, c] = d[y == c].mean(0)
    return m


def label_counts(delta: Delta, profiles: torch.Tensor, records: int) -> np.ndarray:
    """Greedy label counts [classes] of the `records` records behind a sum (see the module docstring)."""
    u = delta["head.bias"].double()
    k = profiles.shape[1]
    counts = np.zeros(k, dtype=int)
    for _ in range(records):
        best, best_c = np.inf, 0
        for c in range(k):
            trial = counts.copy()
            trial[c] += 1
            m = profiles @ torch.from_numpy(trial).double()
            a = max(float(m @ u) / max(float(m @ m), 1e-300), 0.0)
            err = float((u - a * m).pow(2).sum())
            if err < best:
                best, best_c = err, c
        counts[best_c] += 1
    return counts


def multiset_overlap(pred_counts: np.ndarray, true_labels: np.ndarray, classes: int) -> int:
    """sum_c min(predicted count, true count)."""
    true = np.bincount(true_labels, minlength=classes)
    return int(np.minimum(pred_counts[:classes], true[:classes]).sum())


def blind_guess(prior: np.ndarray, records: int) -> np.ndarray:
    """The label-count guess [classes] with the largest expected overlap for a guesser who knows only the prior."""
    guess = np.zeros(len(prior), dtype=int)
    for _ in range(records):
        gains = binom.sf(guess, records, prior)  # P(A_c >= guess_c + 1)
        guess[int(np.argmax(gains))] += 1
    return guess


def label_chance(prior: np.ndarray, records: int) -> float:
    """Expected share of the `records` labels the best blind guess gets right (max_c p_c for one record)."""
    guess = blind_guess(prior, records)
    expected = sum(binom.sf(np.arange(g), records, prior[c]).sum() for c, g in enumerate(guess))
    return float(expected / records)


def null_overlaps(prior: np.ndarray, records: int, trials: int, draws: int, seed: int) -> np.ndarray:
    """[draws] total overlap over `trials` sums when the labels carry no information (the best blind guess against
    labels drawn from the prior): the null distribution of a label-count attack's score."""
    rng = np.random.default_rng(seed)
    guess = blind_guess(prior, records)
    labels = rng.choice(len(prior), size=(draws, trials, records), p=prior)
    counts = np.stack([(labels == c).sum(-1) for c in range(len(prior))], axis=-1)  # [draws, trials, classes]
    return np.minimum(counts, guess).sum(axis=(1, 2))
