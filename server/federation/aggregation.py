"""Secure aggregation of block cohorts, and the central noise added on top.

`DBlocksSecAgg` (the default, `secagg.mode = "dblocks"`) runs dblocks' own SecAgg+ (dblocks.privacy.secagg,
docs/secure-aggregation.md) for all block cohorts of a round at once: one Flower `send_and_receive` per protocol
stage for every block together, the model and task of a company's block riding on its `upload` request. Each
client sends its L2-clipped delta (norm <= C) in fixed point under uint32 masks; the result is the sum over
the members that survived, exact up to the quantisation (<= 1e-4 C in L2 per client), and the number of them.

`FlowerSecAggPlus` (`secagg.mode = "flower"`) runs Flower's SecAgg+ (legacy `SecAggPlusWorkflow`) for one cohort
with the settings that make it exact for clipped deltas (docs/federation.md): every client sends its L2-clipped delta
with num_examples=1, max_weight=1 and clipping_range=C (a per-value clamp that never bites because every
coordinate of a vector of L2 norm <= C is within [-C, C]); the result is the mean of the survivors' deltas up
to quantisation (step 2C / 2^22). Its known weaknesses (32-bit mask seeds, a dropout during setup or key
sharing loses the round) are why dblocks has its own protocol (issue #6); this one stays for comparison.

The central noise on the mean and the client-level epsilon are `dblocks.privacy.mechanisms`.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat import LegacyContext
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from dblocks.privacy.secagg import Layout, SecAggError
from dblocks.privacy.secagg.flower import FlowerSecAgg, Payload, unflatten_arrays

from .config import SecAggConfig
from .grid import send_and_receive


@dataclass
class AggregateOutcome:
    block_index: int
    cohort: list[int]
    mean: list[np.ndarray] | None = None  # mean of the survivors' clipped deltas (None: failed)
    survivors: list[int] = field(default_factory=list)
    failure: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.mean is not None


class _CohortStrategy(FedAvg):
    """A legacy strategy that sends one block to one fixed cohort and captures the secure aggregate."""

    def __init__(self, cohort: list[int], config: dict) -> None:
        super().__init__(min_fit_clients=len(cohort), min_available_clients=len(cohort), fraction_evaluate=0.0)
        self.cohort, self.fit_config = cohort, config
        self.result: tuple[list[np.ndarray], list[int]] | None = None

    def configure_fit(self, server_round, parameters: Parameters, client_manager):
        proxies = client_manager.all()
        return [(proxies[str(n)], FitIns(parameters, dict(self.fit_config))) for n in self.cohort if str(n) in proxies]

    def aggregate_fit(self, server_round, results, failures):
        if results:
            # SecAgg+ has put the (weighted) mean of the survivors into every result's parameters
            self.result = (parameters_to_ndarrays(results[0][1].parameters), [p.node_id for p, _ in results])
        return (results[0][1].parameters if results else None), {}


class FlowerSecAggPlus:
    """Flower's SecAgg+ over one cohort. Thread-safe: each call has its own LegacyContext."""

    name = "flower-secagg+"

    def __init__(self, cfg: SecAggConfig, clip: float) -> None:
        self.cfg, self.clip = cfg, clip
        self._lock = threading.Lock()

    def aggregate(
        self,
        grid: Grid,
        context: Context,
        block_index: int,
        round: int,
        cohort: list[int],
        weights: list[np.ndarray],
        task_config: dict,
    ) -> AggregateOutcome:
        t0 = time.perf_counter()
        out = AggregateOutcome(block_index, list(cohort))
        strategy = _CohortStrategy(cohort, task_config)
        manager = SimpleClientManager()
        for n in cohort:
            manager.register(GridClientProxy(n, grid, context.run_id))
        legacy = LegacyContext(
            context=Context(
                run_id=context.run_id,
                node_id=context.node_id,
                node_config=context.node_config,
                state=RecordDict(),
                run_config=context.run_config,
            ),
            config=ServerConfig(num_rounds=1),
            strategy=strategy,
            client_manager=manager,
        )
        legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord(weights)
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round})
        workflow = SecAggPlusWorkflow(
            num_shares=1.0,
            reconstruction_threshold=self.cfg.threshold,
            max_weight=1.0,
            clipping_range=self.clip,
            timeout=self.cfg.timeout,
        )
        try:
            workflow(grid, legacy)
        except Exception as e:  # the workflow raises on malformed replies; the round must not vanish silently
            out.failure = f"secure aggregation raised {type(e).__name__}: {e}"
        if strategy.result is not None:
            mean, survivors = strategy.result
            out.mean = [m.astype(np.float32) for m in mean]
            out.survivors = survivors
        elif out.failure is None:
            out.failure = (
                "secure aggregation halted (a client dropped during setup or key sharing, or fewer "
                "than the threshold remained)"
            )
        out.seconds = time.perf_counter() - t0
        return out


class DBlocksSecAgg:
    """dblocks' SecAgg+ over the per-block cohorts of a round (node ids; every cohort >= 3 members).

    `aggregate(cohorts, upcoming)` runs one protocol instance per block, all in the same exchanges. Protocol
    rounds are numbered from `first_round` on, one per call, and never reused: a re-run of a failed block is a
    new protocol round in which the members train afresh (a new, separately accounted release), so the same
    inputs are never summed twice; the numbers must grow across server restarts (clients refuse a round at or
    below their last upload).

    Steady state takes two exchanges per member (upload, unmask): `upcoming` (the cohorts expected next
    round) is planned before this round's uploads, whose replies then announce the members' keys for it. If
    next round's cohorts turn out different (a company left, ran out of budget, joined), that plan is dropped
    and the round plans afresh, which costs its members one `join` exchange.

    `consistency` (default on, as in `dbserver start` deployments) adds the signed-view check (one `confirm`
    exchange). `directory`: path of the signed directory of enrolled identities, re-read every round (a node
    approved mid-run appears in it) and relayed to the companies, which verify and pin it. A node whose reply is
    malformed is a dropout of its instance, with the reason in `self.protocol.server.dropouts`."""

    name = "dblocks-secagg+"

    def __init__(
        self,
        grid: Grid,
        shapes: dict[int, list[tuple[int, ...]]],
        clip: float,
        timeout: float,
        payload: Payload,
        first_round: int = 1,
        *,
        consistency: bool = True,
        directory: str | None = None,
    ) -> None:
        self.shapes = shapes
        layouts = {
            str(b): Layout(dim=sum(int(np.prod(s, dtype=np.int64)) for s in ss), clip_norm=clip)
            for b, ss in shapes.items()
        }
        self.protocol = FlowerSecAgg(
            grid,
            layouts,
            timeout=timeout,
            payload=payload,
            consistency_check=consistency,
            send=functools.partial(send_and_receive, grid),
        )
        self.directory = directory
        self._load_directory()
        self.next_round = first_round  # the next unused protocol round
        self.ahead: tuple[int, dict[int, list[int]]] | None = None  # (protocol round, cohorts) planned ahead

    def _load_directory(self) -> None:
        """Relay the newest signed directory (none yet: no company approved so far; the companies then refuse)."""
        if self.directory is not None and Path(self.directory).exists():
            blob = Path(self.directory).read_bytes()
            if blob != self.protocol.server.directory:
                self.protocol.server.set_directory(blob)

    def aggregate(
        self, cohorts: dict[int, list[int]], upcoming: dict[int, list[int]] | None = None
    ) -> dict[int, AggregateOutcome]:
        t0 = time.perf_counter()
        self._load_directory()
        cohorts = {b: sorted(c) for b, c in cohorts.items()}
        outcomes = {b: AggregateOutcome(b, list(c)) for b, c in cohorts.items()}
        if self.ahead is not None and self.ahead[1] == cohorts:
            proto, planned = self.ahead[0], sorted(cohorts)
        else:
            self.drop_plan_ahead()  # membership changed: the round made ahead is never used, plan a fresh one
            proto, planned = self.next_round, []
            for b, cohort in sorted(cohorts.items()):  # one block's failure to start must not stop the others
                try:
                    self.protocol.plan(proto, {str(b): cohort})
                    planned.append(b)
                except SecAggError as e:
                    outcomes[b].failure = f"secure aggregation could not start: {e}"
        self.next_round, self.ahead = proto + 1, None
        if upcoming:
            upcoming = {b: sorted(c) for b, c in upcoming.items()}
            try:
                for b, cohort in sorted(upcoming.items()):
                    self.protocol.plan(proto + 1, {str(b): cohort})
                self.ahead = (proto + 1, upcoming)
            except SecAggError:
                self.next_round = proto + 2  # a half-made plan is never used: next round plans afresh
        if planned:
            self.protocol.exchange.replies.clear()  # `statuses` then reads this round's replies only
            try:
                result = self.protocol.run(proto)
            except (SecAggError, ValueError) as e:
                for b in planned:
                    outcomes[b].failure = f"secure aggregation failed: {e}"
            else:
                for key, agg in result.aggregates.items():
                    out = outcomes[int(key)]
                    out.mean = unflatten_arrays(agg.mean_update, self.shapes[int(key)])
                    out.survivors = sorted(int(s) for s in agg.survivors)
                node_errors = [
                    f"{stage} {node}: {why[:200]}" for stage, node, why in self.protocol.exchange.errors[-3:]
                ]
                for key, why in result.failures.items():
                    outcomes[int(key)].failure = f"secure aggregation failed: {why}; last node errors: {node_errors}"
        for out in outcomes.values():
            out.seconds = time.perf_counter() - t0
        return outcomes

    def statuses(self) -> dict[int, ConfigRecord]:
        """The "ping" records the members sent with their `unmask` replies of the last `aggregate` (memory and
        budget left, client/handlers.py `liveness`): what next round's ping would ask, answered a moment ago."""
        return {
            n: content.config_records["ping"]
            for (stage, n), content in self.protocol.exchange.replies.items()
            if stage == "unmask" and "ping" in content.config_records
        }

    def drop_plan_ahead(self) -> None:
        """Forget the plan made for next round (e.g. a re-run takes the next protocol round number)."""
        if self.ahead is not None:
            self.next_round, self.ahead = self.ahead[0] + 1, None
