"""The dblocks ServerApp: owns the global model (B blocks) and runs the block schedule round by round.

Per round r:
  1. read run control from the registry (pause / stop / number of rounds);
  2. liveness check: ping every connected node (`query.ping`), collect memory and budget reports;
  3. assign one cohort per block (scheduler.assign), each node to at most one block;
  4. securely aggregate every cohort's clipped deltas, each company receiving only its block (weights +
     BlockTask): with dblocks' SecAgg+ (default) all blocks share each protocol exchange; with Flower's
     SecAgg+ each block runs its own workflow concurrently. A block whose aggregation fails is re-run once in
     the same round with the members that still answer (they train afresh: a new, accounted release; never
     the same inputs summed twice), else skipped with the reason recorded;
  5. release: mean + N(0, (z_c C / K)^2), theta += server_lr * release; register the version (weights,
     cohort, record- and client-level privacy numbers) and checkpoint it; evaluate the assembled model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from dblocks.privacy.accounting import MechanismStep, epsilon
from dblocks.privacy.secagg.flower import send_and_receive
from dblocks.shared.fedmsg import BlockTask, check_update
from dblocks.shared.presets import get_preset
from dblocks.shared.sampler import classify

from .aggregation import AggregateOutcome, DBlocksSecAgg, FlowerSecAggPlus, add_central_noise, client_level_epsilon
from .config import RunConfig, round_lr
from .model_state import GlobalModel
from .scheduler import NodeInfo, assign

log = logging.getLogger("flwr")  # Flower's logger: lines show up in `flwr run --stream` and the run log
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # `flwr run` passes config-path; Flower's simulation engine (bench/scale.py) passes no run config
    cfg = RunConfig.load(context.run_config.get("config-path") or os.environ["DBLOCKS_RUN_CONFIG"])
    Federation(cfg, grid, context).run()


class Federation:
    def __init__(self, cfg: RunConfig, grid: Grid, context: Context) -> None:
        self.cfg, self.grid, self.context = cfg, grid, context
        self.preset = get_preset(cfg.task)
        self.schedule = self.preset.noise_schedule(cfg.num_blocks)
        self.registry = None
        if cfg.registry_url:
            from dblocks.server.registry.client import RegistryClient

            self.registry = RegistryClient(cfg.registry_url, cfg.registry_token)
            self.rid = int(cfg.run_id)  # the registry's id of this run
        self.rng = np.random.default_rng()  # central noise: fresh OS entropy, never a fixed seed
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
        starts.write_text(json.dumps([*json.loads(starts.read_text()), time.time()] if starts.exists() else [time.time()]))
        if cfg.secagg.mode == "dblocks":
            shapes = {b: self.model.param_shapes(b) for b in range(cfg.num_blocks)}
            # protocol rounds grow across restarts: each server session gets its own range
            self.secagg = DBlocksSecAgg(grid, shapes, cfg.update_clip, cfg.secagg.timeout, self._upload_payload,
                                        first_round=self.session * 1_000_000 + 1)
        else:
            self.secagg = FlowerSecAggPlus(cfg.secagg, cfg.update_clip)
        self._tasks: dict[int, BlockTask] = {}  # block -> task of the protocol round under way (dblocks mode)

    # ---- the round loop ---------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        self._status("running")
        self.model.write_manifest(self.preset)
        # resume: round M = the newest any block has; blocks still below M redo M, else go on with M + 1
        rounds = [b.round for b in self.model.blocks]
        r = max(rounds) if min(rounds) < max(rounds) else max(rounds) + 1
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

    def round(self, r: int) -> None:
        cfg, t0 = self.cfg, time.perf_counter()
        todo = [i for i, b in enumerate(self.model.blocks) if b.round < r]  # after a crash: only what is missing
        live = self.ping(self.grid.get_node_ids())
        plan = assign(live, cfg.num_blocks, r, cfg.cohort_size, cfg.min_cohort, cfg.scheduler, seed=cfg.seed)
        cohorts = {b: c for b, c in plan.cohorts.items() if b in todo}
        for b, reason in plan.skipped.items():
            if b in todo:
                self._report_round(r, b, [], "skipped", reason)
        log.info("round %d: %d live nodes; cohorts %s", r, len(live), cohorts)
        upcoming = None
        if r < self._num_rounds():  # planned now, so that this round's uploads announce the keys for it
            upcoming = assign(live, cfg.num_blocks, r + 1, cfg.cohort_size, cfg.min_cohort, cfg.scheduler, seed=cfg.seed).cohorts
        outcomes = self.aggregate_blocks(r, cohorts, attempt=0, upcoming=upcoming)
        retry = {}
        for b, out in outcomes.items():
            if not out.ok:
                alive = [n.node_id for n in self.ping(out.cohort)]
                if len(alive) >= cfg.min_cohort:
                    log.info("block %d round %d: %s; re-running with the %d members still alive", b, r, out.failure, len(alive))
                    self._report_round(r, b, [str(n) for n in out.cohort], "rerun", out.failure)
                    retry[b] = alive
        if retry:
            outcomes.update(self.aggregate_blocks(r, retry, attempt=1))
        for b, out in sorted(outcomes.items()):
            if out.ok:
                self.release(r, b, out)
            else:
                self._report_round(r, b, [str(n) for n in out.cohort], "skipped", out.failure)
        metrics = self.evaluate()
        entry = {"round": r, "seconds": time.perf_counter() - t0, "blocks": sorted(b for b, o in outcomes.items() if o.ok),
                 **metrics}
        self.history.append(entry)
        log.info("round %d done: %s", r, json.dumps(entry))

    def aggregate_blocks(self, r: int, cohorts: dict[int, list[int]], attempt: int,
                         upcoming: dict[int, list[int]] | None = None) -> dict[int, AggregateOutcome]:
        """Every cohort trains its block and returns the securely aggregated mean of its clipped deltas."""
        if isinstance(self.secagg, DBlocksSecAgg):
            self._tasks = {b: self.task_for(r, b, attempt) for b in cohorts}
            if attempt > 0:
                self.secagg.drop_plan_ahead()
            outcomes = self.secagg.aggregate(cohorts, upcoming)
        else:
            with ThreadPoolExecutor(max_workers=max(1, len(cohorts))) as pool:
                futures = {b: pool.submit(self.secagg.aggregate, self.grid, self.context, b, r, c,
                                          self.model.weights_arrays(b), self.task_for(r, b, attempt).to_config())
                           for b, c in cohorts.items()}
                outcomes = {b: f.result() for b, f in futures.items()}
        for b, out in outcomes.items():
            if out.ok:
                try:
                    check_update(out.mean, self.model.param_shapes(b), self.cfg.update_clip)
                except ValueError as e:
                    out.mean, out.failure = None, f"aggregate rejected: {e}"
        return outcomes

    def _upload_payload(self, stage: str, node_id: int, blocks: list[str]) -> RecordDict | None:
        """What rides on a company's `upload` request (dblocks SecAgg+): its block's weights and task only."""
        if stage != "upload" or not blocks:
            return None
        b = int(blocks[0])
        return RecordDict({"arrays": ArrayRecord(self.model.weights_arrays(b)),
                           "task": ConfigRecord(self._tasks[b].to_config())})

    def task_for(self, r: int, b: int, attempt: int = 0) -> BlockTask:
        c = self.cfg
        attempt += 2 * self.session  # two attempts (first try, re-run) per server session
        return BlockTask(run_id=c.run_id, round=r, block_index=b, attempt=attempt, spec_json=self.model.blocks[b].spec.to_json(),
                         noise_multiplier=c.record_noise, max_grad_norm=c.record_clip, sample_rate=c.record_sample_rate,
                         steps=c.record_steps, delta=c.delta, accountant=c.accountant, lr=round_lr(c.lr, r, self._num_rounds()),
                         weight_decay=c.weight_decay, update_clip=c.update_clip, seed=c.seed * 1_000_003 + r * 101 + b + 7 * attempt)

    def release(self, r: int, b: int, out: AggregateOutcome) -> None:
        cfg = self.cfg
        k = len(out.survivors)
        noised, std = add_central_noise(out.mean, cfg.update_clip, cfg.central_noise, k, self.rng)
        parent = self.model.blocks[b].version_id
        state = self.model.apply_update(b, noised, cfg.server_lr, r)
        record_eps = epsilon([MechanismStep(cfg.record_noise, cfg.record_sample_rate, cfg.record_steps)], cfg.delta,
                             cfg.accountant)
        client_eps = client_level_epsilon(cfg.central_noise, state.releases, cfg.delta)
        privacy = {
            "record_epsilon": record_eps, "record_delta": cfg.delta, "record_sample_rate": cfg.record_sample_rate,
            "record_steps": cfg.record_steps, "record_noise_multiplier": cfg.record_noise, "accountant": cfg.accountant,
            "client_epsilon": None if np.isinf(client_eps) else client_eps, "client_delta": cfg.delta,
            "central_noise_multiplier": cfg.central_noise, "central_noise_std": std, "clients_aggregated": k,
        }
        log.info("block %d round %d: aggregated %d/%d clients (%.1f s); record eps %.2f; client eps %s", b, r, k,
                 len(out.cohort), out.seconds, record_eps, privacy["client_epsilon"])
        if self.registry:
            v = self.registry.register_block_version(
                self.rid, b, state.spec.to_json(), state.weights, round=r, parent_version_id=parent,
                cohort=[str(n) for n in out.survivors], clip_norm=cfg.update_clip,
                noise_multiplier=cfg.central_noise, record_epsilon=record_eps, record_delta=cfg.delta,
                record_sample_rate=cfg.record_sample_rate, record_steps=cfg.record_steps,
                client_epsilon=privacy["client_epsilon"], client_delta=cfg.delta, accountant=cfg.accountant,
                metrics={"releases": state.releases, "seconds": out.seconds, **privacy}, code_version=_code_version())
            state.version_id = v["id"]
        self.model.save_checkpoint(b)
        self._report_round(r, b, [str(n) for n in out.survivors], "completed", None,
                           {"seconds": out.seconds, "planned": len(out.cohort), **privacy})

    # ---- liveness ---------------------------------------------------------------------------------
    def ping(self, node_ids) -> list[NodeInfo]:
        node_ids = list(node_ids)
        if not node_ids:
            return []
        msgs = [Message(RecordDict({"ping": ConfigRecord({"run_id": self.cfg.run_id})}), dst_node_id=n,
                        message_type="query.ping") for n in node_ids]
        live = []
        for reply in send_and_receive(self.grid, msgs, timeout=self.cfg.ping_timeout):
            if reply.has_error():
                continue
            info = reply.content["ping"]
            live.append(NodeInfo(reply.metadata.src_node_id, float(info.get("memory_mb", float("inf"))),
                                 float(info.get("budget_left", float("inf")))))
        # a company that cannot afford one more round of the record-level mechanism is not asked
        need = epsilon([MechanismStep(self.cfg.record_noise, self.cfg.record_sample_rate, self.cfg.record_steps)],
                       self.cfg.delta, self.cfg.accountant)
        return [n for n in live if n.budget_left >= need * 0.999]

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
        path.write_text(json.dumps({"run_id": self.cfg.run_id, "status": status, "reason": reason, "time": time.time(),
                                    "rounds": self.history}, indent=1))
        if self.registry and not local_only:
            self.registry.set_status(self.rid, status, reason)

    def _report_round(self, r: int, b: int, cohort: list[str], status: str, reason: str | None, stats: dict | None = None) -> None:
        if reason:
            log.info("block %d round %d %s: %s", b, r, status, reason)
        if self.registry:
            self.registry.report_round(self.rid, r, b, cohort, status, reason, stats or {})


def _code_version() -> str:
    from importlib.metadata import version

    return f"dblocks {version('dblocks')}"
