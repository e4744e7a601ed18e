"""The dblocks ServerApp: owns the global model (B blocks) and runs the block schedule round by round.

`Federation.round` is the whole round, top to bottom; each hop is owned by one module:
  1. ping      every connected node answers with its memory and record-level budget left (`ping` here; a
               malformed, missing or erroring reply makes the node a dropout of the round, with the reason).
               A node that said the same with its `unmask` reply at the end of the last round (seconds ago) is
               not asked again: one exchange less per round;
  2. assign    one cohort per block, each node in at most one (scheduler.assign);
  3. configure each block's task (strategy.BlockStrategy.configure), logged as a release of its cohort;
  4. aggregate the cohorts' clipped deltas by secure aggregation, each company receiving only its block
               (aggregation.DBlocksSecAgg: all blocks share each protocol exchange; FlowerSecAggPlus: one workflow
               per block), the result checked (BlockStrategy.accept). A block whose aggregation failed is re-run
               once with the members still alive (they train afresh: a new, accounted release); an exception
               out of a shared aggregation fails only its blocks, re-run one by one;
  5. release   mean + N(0, (z_c C / K)^2), theta += server_lr * release, the version record with each company's
               epsilons composed over the run (BlockStrategy.release); registered and checkpointed (`publish`);
  6. evaluate  the assembled model, and report: per-company composed epsilons and the round to the registry.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from dblocks.privacy.accounting import MechanismStep
from dblocks.shared.fedmsg import BlockTask
from dblocks.shared.presets import get_preset
from dblocks.shared.procs import shorten_object_pull_retries
from dblocks.shared.sampler import classify

from .aggregation import AggregateOutcome, DBlocksSecAgg, FlowerSecAggPlus
from .config import RunConfig
from .grid import send_and_receive
from .model_state import GlobalModel
from .releases import ReleaseLog
from .scheduler import NodeInfo, assign
from .strategy import BlockRelease, BlockStrategy

HEARD_FRESH_SECONDS = 30.0  # how long a node's status from its last `unmask` reply stands in for a ping
log = logging.getLogger("flwr")  # Flower's logger: lines show up in `flwr run --stream` and the run log
app = ServerApp()
RAISED = "aggregation raised"  # prefix of the failure of blocks whose aggregation raised an exception


@app.main()
def main(grid: Grid, context: Context) -> None:
    shorten_object_pull_retries()  # a reply pulled while its SuperNode still pushes it waits 0.05 s, not 1 s
    # `flwr run` passes config-path; Flower's simulation engine (bench/scale.py) passes no run config
    cfg = RunConfig.load(str(context.run_config.get("config-path") or os.environ["DBLOCKS_RUN_CONFIG"]))
    Federation(cfg, grid, context).run()


class Federation:
    def __init__(self, cfg: RunConfig, grid: Grid, context: Context) -> None:
        self.cfg, self.grid, self.context = cfg, grid, context
        self.preset = get_preset(cfg.task)
        self.schedule = self.preset.noise_schedule(cfg.num_blocks)
        self.registry = None
        if cfg.registry_url:
            from dblocks.shared.registry_client import RegistryClient

            self.registry = RegistryClient(cfg.registry_url, cfg.registry_token)
            self.rid = int(cfg.run_id)  # the registry's id of this run
        self.model = GlobalModel.initial(self.preset, self.schedule, cfg.seed, cfg.init_model_dir)
        self.model.checkpoint_dir = Path(cfg.checkpoint_dir)
        self.model.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if self.registry:
            self.model.resume_from_registry(self.registry, self.rid)
        else:
            self.model.resume_from_checkpoint(self.model.checkpoint_dir)
        self.test = self.preset.load_split()[1]
        self.history: list[dict] = []
        # every start of the ServerApp for this run is a session; task attempts are numbered per session so that a
        # resumed round is a new (accounted) release at the companies, not a replay they would refuse
        starts = self.model.checkpoint_dir / "starts.json"
        self.session = len(json.loads(starts.read_text())) if starts.exists() else 0
        previous = json.loads(starts.read_text()) if starts.exists() else []
        starts.write_text(json.dumps([*previous, time.time()]))
        self.releases = ReleaseLog(self.model.checkpoint_dir / "releases.json")  # who took part in which release
        self.strategy = BlockStrategy(cfg, self.model, self.releases, self.session, self._num_rounds)
        self.secagg: DBlocksSecAgg | FlowerSecAggPlus
        if cfg.secagg.mode == "dblocks":
            shapes = {b: self.model.param_shapes(b) for b in range(cfg.num_blocks)}
            # protocol rounds grow across restarts: each server session gets its own range
            self.secagg = DBlocksSecAgg(
                grid,
                shapes,
                cfg.update_clip,
                cfg.secagg.timeout,
                self._upload_payload,
                first_round=self.session * 1_000_000 + 1,
                consistency=cfg.secagg.consistency,
                directory=cfg.secagg.directory,
            )
        else:
            self.secagg = FlowerSecAggPlus(cfg.secagg, cfg.update_clip)
        self._tasks: dict[int, BlockTask] = {}  # block -> task of the protocol round under way (dblocks mode)
        self.dropped: dict[int, str] = {}  # node -> why it is not in this round (ping)
        self.heard: dict[int, NodeInfo] = {}  # node -> its status from the last round's unmask reply
        self.heard_at = 0.0  # when (time.monotonic())
        self._unregistered_said: set[int] = set()  # nodes already logged as missing from the registry

    # ---- the round loop ---------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        self._status("running")
        self.model.write_manifest(self.preset)
        # resume: round M = the newest any block has; blocks still below M redo M, else go on with M + 1
        rounds = [b.round for b in self.model.blocks]
        r = max(rounds) if min(rounds) < max(rounds) else max(rounds) + 1
        self.wait_for_nodes()
        try:
            while r <= self._num_rounds():
                if not self._wait_while_paused():
                    log.info("run %s stopped by the operator before round %d", cfg.run_id, r)
                    self._status("stopped", "stopped by the operator", local_only=True)
                    return
                self.round(r)
                r += 1
        except Exception as e:
            self._status("failed", f"{type(e).__name__}: {e}")
            raise
        metrics = self.evaluate()
        self.model.write_manifest(self.preset, {"final": metrics, "rounds": self.history})
        log.info("run %s finished: %s", cfg.run_id, json.dumps(metrics))
        self._status("finished")

    def wait_for_nodes(self, poll: float = 0.5) -> int:
        """Wait until `min_nodes` companies are connected to the SuperLink, or `min_nodes_timeout` seconds; returns
        how many are. Connected is not yet warm: the first ping waits for each company's answer."""
        need, t0 = self.cfg.min_nodes, time.monotonic()
        have = len(list(self.grid.get_node_ids())) if need else 0
        if have < need:
            log.info("waiting for %d companies to connect (%d connected)", need, have)
        while have < need and time.monotonic() - t0 < self.cfg.min_nodes_timeout:
            time.sleep(poll)
            have = len(list(self.grid.get_node_ids()))
        if have < need:
            log.warning("only %d of %d companies connected after %.0f s; starting", have, need, time.monotonic() - t0)
        return have

    def round(self, r: int) -> None:
        """ping -> assign -> aggregate (configure, secure aggregation, accept; re-run failures) -> release ->
        evaluate -> report."""
        t0 = time.perf_counter()
        todo = [i for i, b in enumerate(self.model.blocks) if b.round < r]  # after a crash: only what is missing
        self.dropped = {}
        fresh = time.monotonic() - self.heard_at < HEARD_FRESH_SECONDS
        live = self.ping(self.grid.get_node_ids(), known=self.heard if fresh else None)
        cohorts, upcoming = self.assign(r, live, todo)
        outcomes = self.aggregate_with_retry(r, cohorts, upcoming)
        self.heard, self.heard_at = self._statuses(), time.monotonic()
        for b, out in sorted(outcomes.items()):
            if out.ok:
                self.publish(self.strategy.release(r, b, out))
            else:
                self._report_round(r, b, [str(n) for n in out.cohort], "skipped", out.failure)
        self._record_node_privacy(r)
        metrics = self.evaluate()
        entry = {
            "round": r,
            "seconds": time.perf_counter() - t0,
            "blocks": sorted(b for b, o in outcomes.items() if o.ok),
            "dropped": {str(n): why for n, why in sorted(self.dropped.items())},
            **metrics,
        }
        self.history.append(entry)
        log.info("round %d done: %s", r, json.dumps(entry))
        if self.registry and (metrics or self.dropped):  # the run page's accuracy curve (round level, the assembled
            # model) and who was not in the round and why (skipped for budget, no reply, a bad reply): the operator's
            self.registry.report_round_metrics(
                self.rid, r, {**metrics, **({"dropped": entry["dropped"]} if self.dropped else {})}
            )

    def assign(self, r: int, live: list[NodeInfo], todo: list[int]) -> tuple[dict[int, list[int]], dict | None]:
        """This round's cohorts of the blocks still to do (a block without enough nodes is reported skipped), and
        next round's, planned now so that this round's uploads announce the keys for it."""
        cfg = self.cfg
        plan = assign(live, cfg.num_blocks, r, cfg.cohort_size, cfg.min_cohort, seed=cfg.seed, blocks=cfg.adapt_blocks)
        cohorts = {b: c for b, c in plan.cohorts.items() if b in todo}
        for b, reason in plan.skipped.items():
            if b in todo:
                self._report_round(r, b, [], "skipped", reason)
        log.info("round %d: %d live nodes; cohorts %s", r, len(live), cohorts)
        upcoming = None
        if r < self._num_rounds():
            upcoming = assign(
                live, cfg.num_blocks, r + 1, cfg.cohort_size, cfg.min_cohort, seed=cfg.seed, blocks=cfg.adapt_blocks
            ).cohorts
        return cohorts, upcoming

    def aggregate_with_retry(
        self, r: int, cohorts: dict[int, list[int]], upcoming: dict[int, list[int]] | None
    ) -> dict[int, AggregateOutcome]:
        """Every cohort's accepted aggregate; a failed block is re-run once with the members still alive. A shared
        aggregation that raised is re-run block by block: one cohort's bad message fails only its block."""
        outcomes = self.aggregate_blocks(r, cohorts, attempt=0, upcoming=upcoming)
        isolate = any((o.failure or "").startswith(RAISED) for o in outcomes.values())
        retry = {}
        for b, out in outcomes.items():
            if not out.ok:
                alive = [n.node_id for n in self.ping(out.cohort)]
                if len(alive) >= self.cfg.min_cohort:
                    log.info(
                        "block %d round %d: %s; re-running with the %d members still alive",
                        b,
                        r,
                        out.failure,
                        len(alive),
                    )
                    self._report_round(r, b, [str(n) for n in out.cohort], "rerun", out.failure)
                    retry[b] = alive
        for group in [{b: c} for b, c in retry.items()] if isolate else [retry]:
            if group:
                outcomes.update(self.aggregate_blocks(r, group, attempt=1))
        return outcomes

    def aggregate_blocks(
        self, r: int, cohorts: dict[int, list[int]], attempt: int, upcoming: dict[int, list[int]] | None = None
    ) -> dict[int, AggregateOutcome]:
        """Every cohort trains its block and returns the securely aggregated mean of its clipped deltas.

        Every task is logged as a release of its cohort before it is sent. An exception out of an aggregation
        (what a node sent that the protocol did not expect) fails the blocks of that aggregation only, with the
        reason; it never leaves this method."""
        tasks = {b: self.strategy.configure(r, b, attempt) for b in cohorts}
        for b, t in tasks.items():
            self.releases.trained(r, b, t.attempt, cohorts[b], t.mechanism)
        if isinstance(self.secagg, DBlocksSecAgg):
            self._tasks = tasks
            if attempt > 0:
                self.secagg.drop_plan_ahead()
            try:
                outcomes = self.secagg.aggregate(cohorts, upcoming)
            except Exception as e:  # noqa: BLE001 - a node's message must never fail the run
                self.secagg.drop_plan_ahead()
                outcomes = {b: _raised(b, c, e) for b, c in cohorts.items()}
        else:
            with ThreadPoolExecutor(max_workers=max(1, len(cohorts))) as pool:
                futures = {
                    b: pool.submit(
                        self.secagg.aggregate,
                        self.grid,
                        self.context,
                        b,
                        r,
                        c,
                        self.model.weights_arrays(b),
                        tasks[b].to_config(),
                    )
                    for b, c in cohorts.items()
                }
                outcomes = {}
                for b, f in futures.items():
                    try:
                        outcomes[b] = f.result()
                    except Exception as e:  # noqa: BLE001 - a node's message must never fail the run
                        outcomes[b] = _raised(b, cohorts[b], e)
        return {b: self.strategy.accept(b, out) for b, out in outcomes.items()}

    def _upload_payload(self, stage: str, node_id: int, blocks: list[str]) -> RecordDict | None:
        """What rides on a company's `upload` request (dblocks SecAgg+): its block's weights and task only."""
        if stage != "upload" or not blocks:
            return None
        b = int(blocks[0])
        # one flat float32 array, not one per tensor: Flower moves every Array as its own object (a request to and
        # from the SuperLink each), ~100 per block; the company splits it by its block's shapes (client/trainer.py)
        flat = np.concatenate([a.ravel() for a in self.model.weights_arrays(b)])
        return RecordDict(
            {"arrays": ArrayRecord({"flat": Array(flat)}), "task": ConfigRecord(self._tasks[b].to_config())}
        )

    def publish(self, rel: BlockRelease) -> None:
        """Register the released version (its id becomes the block's parent for the next), checkpoint it and
        report the round."""
        s, out = rel.stats, rel.outcome
        log.info(
            "block %d round %d: aggregated %d/%d clients (%.1f s); composed record eps %.2f; client eps %s (%s)",
            rel.block,
            rel.round,
            len(out.survivors),
            len(out.cohort),
            out.seconds,
            s["record_epsilon"],
            s["client_epsilon"],
            self.cfg.accountant,
        )
        if self.registry:
            v = self.registry.register_block_version(
                self.rid, rel.block, rel.state.spec.to_json(), rel.state.weights, rel.meta
            )
            rel.state.version_id = v["id"]
        self.model.save_checkpoint(rel.block)
        self._report_round(
            rel.round,
            rel.block,
            rel.meta.cohort,
            "completed",
            None,
            {"seconds": out.seconds, "planned": len(out.cohort), **s},
        )

    # ---- liveness ---------------------------------------------------------------------------------
    def _statuses(self) -> dict[int, NodeInfo]:
        """Each member's status from its reply to the round's last SecAgg stage (dblocks mode; a malformed one is
        ignored: that node is pinged)."""
        if not isinstance(self.secagg, DBlocksSecAgg):
            return {}
        out = {}
        for n, record in self.secagg.statuses().items():
            try:
                out[n] = node_info(n, record)
            except ValueError:
                continue
        return out

    def ping(self, node_ids, known: dict[int, NodeInfo] | None = None) -> list[NodeInfo]:
        """The nodes that answered with a well-formed liveness reply and can afford one more round; every other
        node is a dropout of this round, its reason in `self.dropped`. A node in `known` (its status from the
        last round's unmask reply) is not asked again, unless that status says it cannot afford one more round:
        the ping then tells the company so (client/handlers.py `say_if_unaffordable`)."""
        node_ids = list(node_ids)
        if not node_ids:
            return []
        # a company that cannot afford one more round of the record-level mechanism is not asked: the cost is what
        # one more release adds to what it already spent in this run (its ledger checks again, exactly)
        c = self.cfg
        step = MechanismStep(c.record_noise, c.record_sample_rate, c.record_steps)

        def budget_refusal(src: int, info: NodeInfo) -> str | None:
            need = self.releases.marginal_record_epsilon(src, step, c.delta, c.accountant)
            if info.budget_left < need * 0.999:
                return (
                    f"skipped for budget: record-level budget left {info.budget_left:.3g} is below what one more "
                    f"round adds ({need:.3g})"
                )
            return None

        live = {n: known[n] for n in node_ids if known and n in known and budget_refusal(n, known[n]) is None}
        ask = [n for n in node_ids if n not in live]
        msgs = [
            Message(
                RecordDict({"ping": ConfigRecord({"run_id": self.cfg.run_id, **self._next_task_mechanism()})}),
                dst_node_id=n,
                message_type="query.ping",
            )
            for n in ask
        ]
        why = {n: "no reply to the ping" for n in ask}
        for reply in send_and_receive(self.grid, msgs, timeout=self.cfg.ping_timeout) if msgs else []:
            src = None
            try:
                src = reply.metadata.src_node_id
                if src not in why or src in live:
                    continue  # not asked, or answered twice: the first answer stands
                info = node_info_from_ping(reply)
            except Exception as e:  # noqa: BLE001 - whatever a node sends, it only drops that node
                if isinstance(src, int) and src in why and src not in live:
                    why[src] = f"bad ping reply: {type(e).__name__}: {e}"[:300]
                continue
            skip = budget_refusal(src, info)
            if skip:
                why[src] = skip
                continue
            live[src] = info
            why.pop(src)
        for n, reason in why.items():
            log.warning("node %s is a dropout of this round: %s", n, reason)
        self.dropped.update(why)
        return [live[n] for n in node_ids if n in live]

    def _next_task_mechanism(self) -> dict:
        """The record-level mechanism of one more round, in the ping: a company that cannot afford it says so."""
        c = self.cfg
        return {"noise": c.record_noise, "sample_rate": c.record_sample_rate, "steps": c.record_steps, "delta": c.delta}

    def _record_node_privacy(self, r: int) -> None:
        """Each company that took part in round r: its record-level epsilon composed over all its releases in
        the run, into the registry's per-node privacy (registry nodes are matched by their SuperLink node id)."""
        touched = {n: rows[-1] for n, rows in self.releases.by_node.items() if rows and rows[-1].round == r}
        if not self.registry or not touched:
            return
        ids = {}
        for node in self.registry.list_nodes():
            info = node.get("info")
            link = info.get("superlink") if isinstance(info, dict) else None
            link = str(link.get("node_id") or "") if isinstance(link, dict) else ""
            if link.isdigit():
                ids[int(link)] = node["id"]
        for n, last in sorted(touched.items()):
            if n not in ids:
                if n not in self._unregistered_said:  # once per node and run, not every round
                    self._unregistered_said.add(n)
                    log.warning("node %s is not in the registry: its composed epsilon is in the block versions only", n)
                continue
            e = self.releases.composed(n, self.cfg.delta, self.cfg.accountant)
            self.registry.record_node_privacy(
                ids[n],
                self.rid,
                last.block,
                r,
                e.record_epsilon,
                e.delta,
                e.accountant,
                sample_rate=last.record.sample_rate,
                steps=e.steps,
            )

    # ---- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.preset.kind != "classifier":
            return {}
        blocks = [b.module.eval() for b in self.model.blocks]
        logp = classify(blocks, self.schedule, self.test.x, self.schedule.block_grid(1))
        return {"test_accuracy": float((logp.argmax(-1) == self.test.y).float().mean())}

    # ---- registry ---------------------------------------------------------------------------------
    def _num_rounds(self) -> int:
        if self.registry:
            return int(self.registry.control_state(self.rid).get("num_rounds") or self.cfg.num_rounds)
        return self.cfg.num_rounds

    def _wait_while_paused(self) -> bool:
        """True to go on, False when the operator stopped the run."""
        if not self.registry:
            return True
        while True:
            status = self.registry.control_state(self.rid)["status"]
            if status in ("stopped", "failed"):
                return False
            if status != "paused":
                return True
            time.sleep(2.0)

    def _status(self, status: str, reason: str | None = None, local_only: bool = False) -> None:
        """Record the run's state locally (run dir status.json, read by `dbserver status`) and in the registry."""
        path = Path(self.cfg.checkpoint_dir).parent / "status.json"
        path.write_text(
            json.dumps(
                {
                    "run_id": self.cfg.run_id,
                    "status": status,
                    "reason": reason,
                    "time": time.time(),
                    "rounds": self.history,
                },
                indent=1,
            )
        )
        if self.registry and not local_only:
            self.registry.set_status(self.rid, status, reason)

    def _report_round(
        self, r: int, b: int, cohort: list[str], status: str, reason: str | None, stats: dict | None = None
    ) -> None:
        if reason:
            log.info("block %d round %d %s: %s", b, r, status, reason)
        if self.registry:
            self.registry.report_round(self.rid, r, b, cohort, status, reason, stats or {})


def node_info_from_ping(reply: Message) -> NodeInfo:
    """A node's liveness reply as NodeInfo, or ValueError saying what is wrong with it. The reply must carry a
    "ping" config record; memory_mb (MB training may use) and budget_left (record-level epsilon left) are
    optional (absent: no limit stated) and, when present, numbers >= 0."""
    if reply.has_error():
        raise ValueError(f"error reply: {(reply.error.reason or '')[:200]}")
    records = reply.content.config_records
    if "ping" not in records:
        raise ValueError(f"the reply has no 'ping' config record (it has {sorted(reply.content.keys())[:5]})")
    return node_info(reply.metadata.src_node_id, records["ping"])


def node_info(node_id: int, info) -> NodeInfo:
    """A node's "ping" config record as NodeInfo, or ValueError saying what is wrong with it."""
    values = {}
    for key in ("memory_mb", "budget_left"):
        if key not in info:
            continue
        v = info[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{key} is a {type(v).__name__}, not a number")
        if math.isnan(v) or v < 0:
            raise ValueError(f"{key} is {v}, not a number >= 0")
        values[key] = float(v)
    return NodeInfo(node_id, **values)


def _raised(b: int, cohort: list[int], e: Exception) -> AggregateOutcome:
    return AggregateOutcome(b, list(cohort), failure=f"{RAISED} {type(e).__name__}: {str(e)[:300]}")
