"""The strategy of a block round (in the manner of Flower's strategies): what a block's cohort is asked to do,
which aggregate is accepted, and what is released from it. No transport, no registry: the round loop in
serverapp.py sends, receives and records.

  configure(round, block, attempt) -> BlockTask: the DP-SGD mechanism, learning rate and clip C for the cohort.
  accept(block, outcome): the securely aggregated mean is kept only if its members are a non-empty part of the
      cohort and it passes `mechanisms.check_update` (shapes, finiteness, size, ||mean|| <= C).
  release(round, block, outcome) -> BlockRelease: mean + N(0, (z_c C / K)^2 I) (K = members aggregated),
      theta_b += server_lr * v_b with v_b = server_momentum * v_b + release (heavy ball; post-processing of the
      released means, no privacy cost; v_b lives in memory: a restarted server starts from v = 0), and the
      version record with each company's epsilons composed over all its releases in the run
      (`releases.ReleaseLog`, the run's accountant).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dblocks.privacy.accounting import MechanismStep, epsilon
from dblocks.privacy.mechanisms import add_central_noise, check_update, client_level_epsilon
from dblocks.shared.fedmsg import BlockTask
from dblocks.shared.versions import VersionMeta

from .aggregation import AggregateOutcome
from .config import RunConfig, round_lr
from .model_state import BlockState, GlobalModel, momentum_step
from .releases import ReleaseLog


@dataclass
class BlockRelease:
    """A released block version: its new state, its registry record and the round's stats (privacy numbers)."""

    round: int
    block: int
    outcome: AggregateOutcome
    state: BlockState
    meta: VersionMeta
    stats: dict


class BlockStrategy:
    """Configures, accepts and releases block rounds of one run (`session`: this server start, see serverapp)."""

    def __init__(
        self, cfg: RunConfig, model: GlobalModel, releases: ReleaseLog, session: int, num_rounds: Callable[[], int]
    ) -> None:
        self.cfg, self.model, self.releases, self.session, self.num_rounds = cfg, model, releases, session, num_rounds
        self.rng = np.random.default_rng()  # central noise: fresh OS entropy, never a fixed seed
        self.velocity: dict[int, list[np.ndarray]] = {}  # server momentum per block
        from dblocks.shared.schema import RunData

        # the run's class list and feature statistics, fixed for the run and sent in every task (shared/schema.py)
        num_classes = model.blocks[0].spec.arch_config.num_classes
        self.run_data = RunData.for_run(num_classes, cfg.classes, cfg.init_model_dir)

    def configure(self, r: int, b: int, attempt: int = 0) -> BlockTask:
        """Block b's task in round r. Attempts are numbered per server session (two each: first try, re-run), so
        a resumed round is a new, accounted release at the companies, not a replay they would refuse."""
        c = self.cfg
        return BlockTask(
            run_id=c.run_id,
            round=r,
            block_index=b,
            attempt=attempt + 2 * self.session,
            spec_json=self.model.blocks[b].spec.to_json(),
            noise_multiplier=c.record_noise,
            max_grad_norm=c.record_clip,
            sample_rate=c.record_sample_rate,
            steps=c.record_steps,
            delta=c.delta,
            accountant=c.accountant,
            lr=round_lr(c.lr, r, self.num_rounds()),
            weight_decay=c.weight_decay,
            update_clip=c.update_clip,
            trainable=c.trainable,
            **self.run_data.task_fields(),
        )

    def accept(self, b: int, out: AggregateOutcome) -> AggregateOutcome:
        """Reject (mean None, failure set) an aggregate whose members are not the cohort's or that fails the
        update check."""
        if out.ok and not (out.survivors and set(out.survivors) <= set(out.cohort)):
            out.mean, out.failure = (
                None,
                (
                    f"aggregate rejected: its members {sorted(out.survivors)[:20]} are not "
                    f"a non-empty part of the cohort {sorted(out.cohort)[:20]}"
                ),
            )
        if out.mean is not None:  # out.ok
            try:
                check_update(out.mean, self.model.param_shapes(b), self.cfg.update_clip)
            except Exception as e:  # noqa: BLE001 - ValueError for a bad update; anything else is a bad message
                out.mean, out.failure = None, f"aggregate rejected: {type(e).__name__}: {e}"
        return out

    def release(self, r: int, b: int, out: AggregateOutcome) -> BlockRelease:
        """Publish the noised mean into the model. The record states, for record and client level, the largest
        epsilon among the companies it aggregated, each composed over all its releases in this run with the
        run's accountant; the cost of this one release is kept as *_one_release."""
        if out.mean is None:
            raise ValueError(f"block {b}: no aggregate to release ({out.failure})")
        cfg = self.cfg
        k = len(out.survivors)
        noised, std = add_central_noise(out.mean, cfg.update_clip, cfg.central_noise, k, self.rng)
        parent = self.model.blocks[b].version_id
        step = momentum_step(self.velocity, b, noised, cfg.server_momentum) if cfg.server_momentum else noised
        state = self.model.apply_update(b, step, cfg.server_lr, r)
        self.releases.published(r, b, out.survivors, cfg.central_noise)
        nodes = {n: self.releases.composed(n, cfg.delta, cfg.accountant) for n in out.survivors}
        record_eps = max(e.record_epsilon for e in nodes.values())
        client_eps = _finite(max(e.client_epsilon for e in nodes.values()))
        stats = {
            "record_epsilon": record_eps,
            "record_delta": cfg.delta,
            "record_sample_rate": cfg.record_sample_rate,
            "record_steps": cfg.record_steps,
            "record_noise_multiplier": cfg.record_noise,
            "accountant": cfg.accountant,
            "client_epsilon": client_eps,
            "client_delta": cfg.delta,
            "central_noise_multiplier": cfg.central_noise,
            "central_noise_std": std,
            "clients_aggregated": k,
            "record_epsilon_one_release": self.one_round_epsilon,
            "client_epsilon_one_release": _finite(
                client_level_epsilon(cfg.central_noise, 1, cfg.delta, cfg.accountant)
            ),
            "composition": f"largest among the cohort of each company's epsilon composed over all its releases in this "
            f"run (all rounds and blocks), {cfg.accountant} accountant",
            "nodes": {
                str(n): {
                    "record_epsilon": e.record_epsilon,
                    "client_epsilon": _finite(e.client_epsilon),
                    "releases": e.releases,
                    "published": e.published,
                }
                for n, e in nodes.items()
            },
        }
        meta = VersionMeta.released(
            r,
            cfg.dp,
            record_epsilon=record_eps,
            client_epsilon=client_eps,
            parent_version_id=parent,
            cohort=[str(n) for n in out.survivors],
            metrics={"releases": state.releases, "seconds": out.seconds, **stats},
            code_version=_code_version(),
        )
        return BlockRelease(r, b, out, state, meta, stats)

    @functools.cached_property
    def one_round_epsilon(self) -> float:
        """Record-level epsilon of one round's DP-SGD mechanism at a company (the run's accountant)."""
        c = self.cfg
        return epsilon([MechanismStep(c.record_noise, c.record_sample_rate, c.record_steps)], c.delta, c.accountant)


def _finite(x: float) -> float | None:
    """JSON has no infinity: an infinite epsilon (no central noise) is recorded as None."""
    return None if math.isinf(x) else x


def _code_version() -> str:
    from importlib.metadata import version

    return f"dblocks {version('dblocks')}"
