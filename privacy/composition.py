"""Privacy of one company over a whole run, composed over every release it took part in.

A company (one node, one data set per run) takes part in releases, one per (round, block, attempt) whose task
it was sent. What each release costs it is public: the task states the mechanism.

Record level. The company trains with DP-SGD: `steps` applications of the Poisson-subsampled Gaussian
mechanism with rate q and noise multiplier z (`MechanismStep(z, q, steps)`). Every task it was sent counts,
whether or not its update ended up in a released aggregate (it trained on its records and sent a masked
result). All of a run's releases use the same records, so they compose, across rounds AND blocks:
    eps_record(delta) = epsilon(concatenation of the mechanisms of all its releases; accountant).

Client level (`dblocks.privacy.mechanisms`). A release that aggregated the company's L2-clipped block delta
(norm <= C) into the mean of K deltas and added N(0, (z_c C / K)^2) is a Gaussian mechanism of sensitivity C / K
with noise std z_c C / K: noise multiplier z_c, no subsampling amplification (cohorts are chosen, not
Poisson-sampled), i.e. `MechanismStep(z_c, 1.0, 1)`. Over the n releases that aggregated the company, across blocks:
    eps_client(delta) = epsilon([MechanismStep(z_c, 1.0, n)]; accountant)   (inf without central noise).

Both use the run's accountant (PRV or RDP, `dblocks.privacy.accounting`). What the server can count is one
run: a company that trains on the same data in several runs composes across runs in its own ledger, which
the server never sees.
"""

from __future__ import annotations

from dataclasses import dataclass

from .accounting import MechanismStep, epsilon
from .mechanisms import client_mechanism


@dataclass(frozen=True)
class NodeRelease:
    """One release a company took part in: the DP-SGD mechanism of its task and, once the aggregate holding
    its delta was published, the central noise multiplier z_c of that publication (None until then)."""

    round: int
    block: int
    attempt: int
    record: MechanismStep
    central_noise: float | None = None

    @property
    def published(self) -> bool:
        return self.central_noise is not None


@dataclass(frozen=True)
class NodeEpsilon:
    """A company's epsilons at `delta`, each composed over all of its releases in the run."""

    record_epsilon: float
    client_epsilon: float
    delta: float
    accountant: str
    releases: int  # tasks it was sent (record level)
    published: int  # releases that aggregated its delta (client level)
    steps: int  # DP-SGD steps over all its releases


def record_history(releases: list[NodeRelease]) -> list[MechanismStep]:
    return [r.record for r in releases]


def client_history(releases: list[NodeRelease]) -> list[MechanismStep]:
    return [client_mechanism(r.central_noise) for r in releases if r.central_noise is not None]


def compose_node_epsilon(releases: list[NodeRelease], delta: float, accountant: str) -> NodeEpsilon:
    """Record- and client-level epsilon of one company composed over all its `releases` (see the module doc)."""
    return NodeEpsilon(
        record_epsilon=epsilon(record_history(releases), delta, accountant),
        client_epsilon=epsilon(client_history(releases), delta, accountant),
        delta=delta,
        accountant=accountant,
        releases=len(releases),
        published=sum(r.published for r in releases),
        steps=sum(r.record.steps for r in releases),
    )
