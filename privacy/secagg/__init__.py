"""SecAgg+ secure aggregation for dblocks: transport-agnostic client/server state machines.

Quick use (in-process; the Flower glue in `flower.py` drives the same steps over Flower messages):

    server = SecAggServer()
    clients = {cid: SecAggClient(cid) for cid in ids}
    net = LocalNetwork(clients, {cid: lambda plan, cid=cid: Contribution(update_of(cid)) for cid in ids})
    layouts = {"0": Layout(dim=..., clip_norm=1.0)}
    plan_round(server, 1, {"0": ids}, layouts, net)
    for r in range(1, rounds + 1):
        if r < rounds:
            plan_round(server, r + 1, {"0": ids}, layouts, net)
        result = run_round(server, r, net)      # result.aggregates["0"].mean_update

See docs/secure-aggregation.md for the protocol, the threat model and the security argument.
"""

from .client import Contribution, SecAggClient
from .directory import Directory, DirectoryView
from .driver import Exchange, LocalNetwork, RoundResult, plan_round, run_round
from .errors import AggregateOverflow, ProtocolRefusal, SecAggError, ThresholdError
from .graph import GraphParams, Policy, choose_params
from .keys import Cert, Identity, TrustStore
from .plan import Plan
from .quant import Extra, QuantSpec
from .server import Aggregate, Layout, SecAggServer

__all__ = [
    "Aggregate",
    "AggregateOverflow",
    "Cert",
    "Contribution",
    "Directory",
    "DirectoryView",
    "Exchange",
    "Extra",
    "GraphParams",
    "Identity",
    "Layout",
    "LocalNetwork",
    "Plan",
    "Policy",
    "ProtocolRefusal",
    "QuantSpec",
    "RoundResult",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "ThresholdError",
    "TrustStore",
    "choose_params",
    "plan_round",
    "run_round",
]
