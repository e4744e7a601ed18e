"""In-process federations for the secure-aggregation tests: real crypto, real state machines, scripted dropouts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from dblocks.privacy.mechanisms import clip_vector
from dblocks.privacy.secagg import (
    Contribution,
    Identity,
    Layout,
    LocalNetwork,
    Policy,
    SecAggClient,
    SecAggServer,
    TrustStore,
    plan_round,
    run_round,
)


@dataclass
class Federation:
    """Clients with fixed random clipped updates; `run(r)` plans round r+1 (if wanted) and runs round r."""

    server: SecAggServer
    net: LocalNetwork
    cohorts: dict[str, list[str]]
    layouts: dict[str, Layout]
    inputs: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)  # (round, client) -> update
    extras: dict[tuple[int, str], dict] = field(default_factory=dict)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def input_of(self, round_: int, cid: str, block: str) -> np.ndarray:
        key = (round_, cid)
        if key not in self.inputs:
            layout = self.layouts[block]
            x = self.rng.normal(size=layout.dim) * self.rng.uniform(0.1, 2.0)
            self.inputs[key] = clip_vector(x, layout.clip_norm)
        return self.inputs[key]

    def contribution(self, cid: str, plan) -> Contribution:
        return Contribution(self.input_of(plan.round, cid, plan.block), self.extras.get((plan.round, cid), {}))

    def start(self, round_: int = 1):
        return plan_round(self.server, round_, self.cohorts, self.layouts, self.net)

    def run(self, round_: int, plan_next: bool = True):
        if plan_next:
            plan_round(self.server, round_ + 1, self.cohorts, self.layouts, self.net)
        return run_round(self.server, round_, self.net)

    def expected_sum(self, round_: int, members) -> np.ndarray:
        return sum(self.inputs[(round_, c)] for c in members)


def build_federation(
    n: int | dict[str, int] = 5,
    dim: int = 64,
    *,
    consistency: bool = False,
    policy: Policy = Policy(),
    seed: int = 0,
    extras=(),
    clip_norm: float = 1.0,
    directory: bool = True,
) -> Federation:
    """directory: identities pinned in advance for everyone (the enrolled directory), as in a deployment; False:
    trust on first use (only to show what pinning prevents)."""
    sizes = {"0": n} if isinstance(n, int) else n
    cohorts, start = {}, 0
    for block, size in sizes.items():
        cohorts[block] = [f"c{i:03d}" for i in range(start, start + size)]
        start += size
    ids = [c for cohort in cohorts.values() for c in cohort]
    identities = {cid: Identity(cid) for cid in ids}
    if directory:
        pinned = {cid: ident.public for cid, ident in identities.items()}

        def trust():
            return TrustStore(dict(pinned), tofu=False)
    else:

        def trust():
            return TrustStore(tofu=True)

    server = SecAggServer(policy=policy, consistency_check=consistency, trust=trust())
    clients = {cid: SecAggClient(cid, identities[cid], policy=policy, trust=trust()) for cid in ids}
    fed = Federation(
        server,
        LocalNetwork(clients, {}),
        cohorts,
        {b: Layout(dim, clip_norm, tuple(extras)) for b in cohorts},
        rng=np.random.default_rng(seed),
    )
    fed.net.contribute = {cid: (lambda plan, cid=cid: fed.contribution(cid, plan)) for cid in ids}
    return fed


@pytest.fixture
def federation():
    return build_federation
