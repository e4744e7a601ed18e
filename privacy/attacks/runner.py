"""Audits end to end: simulate (or load) what an adversary observes, run an attack, score it against ground
truth and baselines, run the positive control, decide a verdict and write the record with its PNG grids.

Entry point: `run_audit(target, spec, out_dir, update=None, truth=None)`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from torch import nn

from dblocks.shared.data import Dataset
from dblocks.shared.imaging import save_grid
from dblocks.shared.training import TrainConfig

from .. import mechanisms
from . import canary as canary_mod
from .closed_form import closed_form_sequence
from .conformance import noise_conformance
from .inversion import ATTACKS as MATCHING_ATTACKS
from .inversion import MatchingTarget, RoundObservation, invert
from .local import LocalTraining, local_update
from .membership import MembershipConfig, membership_audit
from .metrics import ReconstructionScore, bootstrap_mean, clopper_pearson, match_order, score_reconstructions
from .record import AuditRecord, decide
from .scenario import ADVERSARIES, FederationScenario, observe
from .updates import OBSERVATIONS, BlockUpdate, UpdateMeta, clip_delta, release_meta

INVERSION_ATTACKS = ("closed-form", *MATCHING_ATTACKS)
ATTACK_NAMES = (*INVERSION_ATTACKS, "battery", "membership", "canary", "noise-conformance")
CONTROL_TRIALS = 4  # raw noiseless updates a battery's positive controls attack
RAW_CLIP = 1e12  # a clip norm no update reaches: the control's deltas stay raw
NO_CONTROL = "no positive control was run (--no-control): without one, finding nothing means nothing"
CONTROL_PSNR_DB = 30.0  # a positive control reconstructs the raw single-record update at least this well
RELEASE_MARGIN_DB = 1.0  # a release may score at most this much above the mean-record baseline


def spec_needs_update(attack: str) -> bool:
    return attack in INVERSION_ATTACKS or attack == "battery"


@dataclass(frozen=True)
class AuditSpec:
    """Everything an audit run is configured by (hashed into config_hash).

    Federation simulation: clients K, records per client, local_steps / local_lr / local_optimizer,
    clip_norm C, noise_multiplier z (central, client level), rounds. Attack: targets (independent trials),
    iterations / restarts (gradient matching). Record-level DP (canary, membership): dp_* and delta.
    canary_level: "record" (DP-SGD canaries) or "client" (canary clients). population: records used for
    membership / canary runs (0: all)."""

    attack: str
    observe: str
    adversary: str = "server"
    clients: int = 1
    records: int = 1
    local_steps: int = 1
    local_lr: float = 0.01
    local_optimizer: str = "sgd"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    rounds: int = 1
    targets: int = 8
    iterations: int = 300
    restarts: int = 1
    control: bool = True
    dp_noise_multiplier: float = 1.0
    dp_max_grad_norm: float = 1.0
    dp_batch_size: int = 64
    dp_steps: int = 200
    delta: float = 1e-5
    claimed_epsilon: float | None = None
    canaries: int = 1000
    canary_level: str = "record"
    models: int = 8
    train_epochs: int = 20
    population: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attack not in ATTACK_NAMES:
            raise ValueError(f"unknown attack {self.attack!r}; choose one of {', '.join(ATTACK_NAMES)}")
        if self.observe not in OBSERVATIONS:
            raise ValueError(f"unknown observation point {self.observe!r}; choose one of {', '.join(OBSERVATIONS)}")
        if self.adversary not in ADVERSARIES:
            raise ValueError(f"unknown adversary {self.adversary!r}; choose one of {', '.join(ADVERSARIES)}")
        if spec_needs_update(self.attack) and self.observe == "weights":
            raise ValueError(
                "inversion attacks need an update: observe raw|clipped|aggregate|release|sequence "
                "(final weights are audited with --attack membership)"
            )
        if self.attack == "membership" and self.observe != "weights":
            raise ValueError("membership inference attacks the final block weights: use --observe weights")
        if self.canary_level not in ("record", "client"):
            raise ValueError(f"canary level must be record or client, got {self.canary_level!r}")
        if self.clients < 1 or self.records < 1 or self.targets < 1:
            raise ValueError("clients, records and targets must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def training(self) -> LocalTraining:
        # LocalTraining.__post_init__ rejects any other name than "sgd" or "adam"
        optimizer = cast(Literal["sgd", "adam"], self.local_optimizer)
        return LocalTraining(steps=self.local_steps, lr=self.local_lr, optimizer=optimizer)

    @property
    def scenario(self) -> FederationScenario:
        return FederationScenario(
            self.clients, self.records, self.training, self.clip_norm, self.noise_multiplier, self.rounds
        )

    def dp_config(self, noise_multiplier: float | None = None):
        from dblocks.privacy.dpsgd import DPConfig

        return DPConfig(
            noise_multiplier=self.dp_noise_multiplier if noise_multiplier is None else noise_multiplier,
            max_grad_norm=self.dp_max_grad_norm,
            batch_size=self.dp_batch_size,
            steps=self.dp_steps,
            delta=self.delta,
        )


@dataclass
class AuditTarget:
    """The block under audit and the data the auditor holds (candidate pool, population)."""

    block: nn.Module
    block_index: int
    info: dict  # id, task, block_index, owned_interval, training_interval, sha256
    data: Dataset


# ---------------------------------------------------------------------------------------------------
def run_audit(
    target: AuditTarget,
    spec: AuditSpec,
    out_dir: str | Path,
    update: BlockUpdate | None = None,
    truth: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress=None,
) -> AuditRecord:
    """Run `spec` against `target`; write audit.json and PNGs into out_dir; return the record."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = progress or (lambda msg: None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Full backward hook.*")
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        if spec.attack in INVERSION_ATTACKS:
            record = _inversion(target, spec, out, update, truth, log)
        elif spec.attack == "battery":
            record = _battery(target, spec, out, update, truth, log)
        elif spec.attack == "membership":
            record = _membership(target, spec, log)
        elif spec.attack == "canary":
            record = _canary(target, spec, log)
        else:
            record = _conformance(target, spec, update, log)
    record.write(out)
    return record


def _base_record(target: AuditTarget, spec: AuditSpec, **kw) -> dict:
    secagg = {
        "clients_aggregated": spec.clients,
        "clip_norm": spec.clip_norm,
        "noise_multiplier": spec.noise_multiplier,
        "secure_aggregation": spec.observe in ("aggregate", "release", "sequence"),
    }
    return (
        dict(
            attack=spec.attack,
            observation_point=spec.observe,
            adversary=spec.adversary,
            block=target.info,
            rounds=list(range(spec.rounds if spec.observe == "sequence" or spec.attack == "canary" else 1)),
            config=spec.to_dict(),
            seeds={"audit": spec.seed, "targets": [spec.seed * 100003 + t for t in range(spec.targets)]},
            dp={},
            secagg=secagg,
        )
        | kw
    )


# ---------------------------------------------------------------------------------------------------
# inversion
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Reconstructions:
    recon: torch.Tensor
    truth: torch.Tensor
    pool_index: torch.Tensor
    label_hits: int
    labels: int
    sigma_rel_err: list[float]


def _attack_observation(target: AuditTarget, spec: AuditSpec, mtarget: MatchingTarget, scale_known: bool):
    """(images [K' n, ...], labels [K' n], sigmas [K' n] for the first step of the first round)."""
    block, bi = target.block, target.block_index
    kn = mtarget.clients * mtarget.records
    if spec.attack == "closed-form":
        blocks = [target.block] + [_with_params(target.block, rnd.params) for rnd in mtarget.rounds[1:]]
        r = closed_form_sequence(blocks, [rnd.update for rnd in mtarget.rounds], spec.local_lr if scale_known else None)
        img = r.image if r.image is not None else torch.zeros((1, *target.data.x.shape[1:]))
        return img.expand(kn, *img.shape[1:]).clamp(-1, 1), torch.full((kn,), r.label), torch.full((kn,), r.sigma)
    cfg = replace(MATCHING_ATTACKS[spec.attack], iterations=spec.iterations, restarts=spec.restarts, seed=spec.seed)
    with _math_attention():
        res = invert(block, bi, mtarget, cfg)
    return res.images, res.labels, res.sigmas[0, 0]


def _with_params(block: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    import copy

    b = copy.deepcopy(block)
    with torch.no_grad():
        for n, p in b.named_parameters():
            p.copy_(params[n])
    return b


class _math_attention:
    """Double backward through attention needs PyTorch's math SDPA kernel on CPU."""

    def __enter__(self):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        self._ctx = sdpa_kernel(SDPBackend.MATH)
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def simulate_reconstructions(target: AuditTarget, spec: AuditSpec, trials: int, seed: int) -> _Reconstructions:
    """`trials` independent federation rounds on fresh records from the pool, attacked as `spec` says."""
    pool_x, pool_y = target.data.x, target.data.y
    k, n = spec.clients, spec.records
    recons, truths, idxs, hits, count, sig_err = [], [], [], 0, 0, []
    for t in range(trials):
        g = torch.Generator().manual_seed(seed * 100003 + t)
        idx = torch.randperm(len(pool_x), generator=g)[: k * n]
        xs = pool_x[idx].reshape(k, n, *pool_x.shape[1:])
        ys = pool_y[idx].reshape(k, n)
        obs = observe(target.block, target.block_index, xs, ys, spec.scenario, spec.observe, spec.adversary, g)
        images, labels, sigmas = _attack_observation(target, spec, obs.target, obs.scale_known)
        kn = len(obs.truth_x)
        images = match_order(images, obs.truth_x) if kn > 1 else images
        recons.append(images)
        truths.append(obs.truth_x)
        idxs.append(idx[:kn])
        hits += _multiset_hits(labels, obs.truth_y)
        count += kn
        true_sigma = obs.truth_sigma[0, 0]
        if kn == 1:
            sig_err.append(float(abs(sigmas.flatten()[0] - true_sigma[0]) / true_sigma[0]))
    return _Reconstructions(torch.cat(recons), torch.cat(truths), torch.cat(idxs), hits, count, sig_err)


def _multiset_hits(pred: torch.Tensor, true: torch.Tensor) -> int:
    p, t = np.bincount(pred.numpy(), minlength=64), np.bincount(true.numpy(), minlength=64)
    size = max(len(p), len(t))
    return int(np.minimum(np.pad(p, (0, size - len(p))), np.pad(t, (0, size - len(t)))).sum())


def _score(target: AuditTarget, rec: _Reconstructions, seed: int) -> tuple[dict, ReconstructionScore]:
    sc = score_reconstructions(rec.recon, rec.truth, rec.pool_index, target.data.x, seed)
    metrics = sc.metrics()
    metrics["label_accuracy"] = clopper_pearson(rec.label_hits, rec.labels).to_dict()
    if rec.sigma_rel_err:
        metrics["sigma_relative_error"] = bootstrap_mean(rec.sigma_rel_err, seed).to_dict()
    return metrics, sc


def _inversion(target: AuditTarget, spec: AuditSpec, out: Path, update, truth, log) -> AuditRecord:
    image_data = target.data.kind == "image"
    controls = {}
    control_ok, control_reason = False, NO_CONTROL
    if spec.control:
        cspec = replace(
            spec,
            observe="raw",
            adversary="server",
            clients=1,
            records=1,
            noise_multiplier=0.0,
            rounds=1,
            local_steps=1,
            local_optimizer="sgd",
        )
        log("positive control: the raw single-record update")
        crec = simulate_reconstructions(target, cspec, trials=2, seed=spec.seed + 7)
        cm, _ = _score(target, crec, spec.seed)
        control_ok = cm["psnr"]["value"] >= CONTROL_PSNR_DB
        control_reason = (
            f"positive control {'reached' if control_ok else 'did NOT reach'} {CONTROL_PSNR_DB:g} dB on the raw "
            f"single-record update ({cm['psnr']['value']:.1f} dB): "
            + ("the attack works, so its result below is meaningful" if control_ok else "a 'safe' result means nothing")
        )
        controls["raw_single_record"] = {
            "passed": control_ok,
            "psnr": cm["psnr"],
            "threshold_db": CONTROL_PSNR_DB,
            "label_accuracy": cm["label_accuracy"],
        }
        if image_data:
            save_grid(
                torch.cat([crec.truth, crec.recon]), out / "control.png", nrow=len(crec.truth), scale=_scale(crec.truth)
            )
    if update is not None:
        rec = _reconstruct_given(target, spec, update, truth)
        if rec is None:
            record = AuditRecord(
                **_base_record(target, spec),
                metrics={},
                controls=controls,
                verdict="inconclusive",
                reasons=["no ground truth (--truth) for the update: reconstructions saved, not scored"],
                scope="reconstructions of the given update file only",
            )
            return record
    else:
        log(f"attacking {spec.targets} simulated rounds at '{spec.observe}' ({spec.adversary})")
        rec = simulate_reconstructions(target, spec, spec.targets, spec.seed)
    metrics, sc = _score(target, rec, spec.seed)
    artifacts = {}
    if image_data:
        shown = min(len(rec.truth), 16)
        save_grid(
            torch.cat([rec.truth[:shown], rec.recon[:shown]]),
            out / "reconstructions.png",
            nrow=shown,
            scale=_scale(rec.truth),
        )
        artifacts["reconstructions.png"] = "top row: true records; bottom row: reconstructions"
        if controls:
            artifacts["control.png"] = "positive control (raw single-record update): truth / reconstruction"
    over = metrics["psnr_over_mean_baseline"]["value"]
    checks = [
        (
            over > RELEASE_MARGIN_DB,
            f"PSNR {metrics['psnr']['value']:.2f} dB is {over:+.2f} dB over the mean-record baseline "
            f"({metrics['mean_record_psnr']['value']:.2f} dB); allowed {RELEASE_MARGIN_DB:+.1f} dB",
        ),
        (
            not sc.iip_at_chance,
            f"IIP {sc.iip.value:.3f} (95% CI {sc.iip.low:.3f}-{sc.iip.high:.3f}) vs chance {sc.iip_chance:.4f}",
        ),
    ]
    verdict, reasons = decide(checks, control_ok, control_reason)
    if spec.control and control_reason not in reasons:
        reasons.append(control_reason)
    dp = {
        "record_level": "none: the simulated clients train without DP-SGD (the worst case for inversion)",
        "local_training": spec.training.to_dict(),
    }
    secagg = _base_record(target, spec)["secagg"] | {
        "central_noise_std": spec.noise_multiplier * spec.clip_norm / spec.clients
    }
    scope = (
        f"{spec.attack} by a {spec.adversary} adversary observing '{spec.observe}' of block {target.block_index} "
        f"(sigma in {tuple(round(v, 4) for v in target.info.get('training_interval', ()))}); K={spec.clients} clients "
        "x "
        f"{spec.records} record(s), local {spec.local_optimizer} x{spec.local_steps} lr={spec.local_lr}, clip "
        f"C={spec.clip_norm}, "
        f"central z={spec.noise_multiplier}, {spec.rounds if spec.observe == 'sequence' else 1} round(s); "
        f"{len(rec.truth)} target records from '{target.data.name}'. A pass bounds what THIS attack recovers; "
        "it certifies no DP guarantee (use the canary audit and noise conformance for that)."
    )
    return AuditRecord(
        **_base_record(target, spec, dp=dp, secagg=secagg),
        metrics=metrics,
        controls=controls,
        verdict=verdict,
        reasons=reasons,
        scope=scope,
        artifacts=artifacts,
    )


def _scale(images: torch.Tensor) -> int:
    """PNG enlargement: small images (8 x 8 digits) need more to be seen."""
    return max(2, 96 // images.shape[-1])


def _reconstruct_given(target: AuditTarget, spec: AuditSpec, update: BlockUpdate, truth) -> _Reconstructions | None:
    meta = update.meta
    tr = (
        LocalTraining(**{k: v for k, v in meta.local.items() if k in LocalTraining.__dataclass_fields__})
        if meta.local
        else spec.training
    )
    params = {n: p.detach() for n, p in target.block.named_parameters()}
    records = spec.records
    mtarget = MatchingTarget(
        [RoundObservation(params, {k: update.delta[k] for k in params})],
        meta.clients_aggregated,
        records,
        tr,
        meta.reduction,
        meta.clip_norm,
    )
    images, labels, sigmas = _attack_observation(
        target, replace(spec, local_lr=tr.lr), mtarget, meta.observation == "raw"
    )
    if truth is None:
        return None
    tx, ty = truth
    images = match_order(images, tx) if len(tx) > 1 else images
    # the truth records' place in the pool (appended when the pool does not hold them)
    d = torch.cdist(tx.flatten(1), target.data.x.flatten(1))
    idx = d.argmin(1)
    if float(d.min(1).values.max()) > 1e-6:
        target.data = replace(target.data, x=torch.cat([target.data.x, tx]), y=torch.cat([target.data.y, ty]))
        idx = torch.arange(len(target.data.x) - len(tx), len(target.data.x))
    return _Reconstructions(images, tx, idx, _multiset_hits(labels, ty), len(ty), [])


# ---------------------------------------------------------------------------------------------------
# the attack battery (label inference + matched-filter identification; the strongest attack decides)
# ---------------------------------------------------------------------------------------------------
SERVER_VIEW = (
    "The server unmasks the noiseless sum of the clipped deltas (the 'aggregate') and adds the central noise "
    "itself: against the server only record-level DP (DP-SGD on the clients) protects; central noise protects "
    "only those who see the release."
)


def _pool_and_truth(target: AuditTarget, spec: AuditSpec, tx: torch.Tensor | None, ty: torch.Tensor | None):
    """The candidate pool (spec.population records, 0: all; the truth records are added when missing) and the
    truth records' pool indices."""
    from .identify import CandidatePool

    x, y = _population(target, spec)
    if tx is None or ty is None:
        return CandidatePool(x, y), None
    d = torch.cdist(tx.flatten(1).float(), x.flatten(1).float())
    idx = d.argmin(1)
    missing = d.min(1).values > 1e-6
    if bool(missing.any()):
        x, y = torch.cat([x, tx[missing]]), torch.cat([y, ty[missing]])
        idx[missing] = torch.arange(len(x) - int(missing.sum()), len(x))
    return CandidatePool(x, y), idx


def _simulate_observed(target: AuditTarget, spec: AuditSpec, pool, trials: int, seed: int) -> list:
    """`trials` simulated rounds at spec's observation point, on records drawn from the pool."""
    from .battery import Observed

    k, n = spec.clients, spec.records
    out = []
    for t in range(trials):
        g = torch.Generator().manual_seed(seed * 100003 + t)
        idx = torch.randperm(len(pool.x), generator=g)[: k * n]
        xs = pool.x[idx].reshape(k, n, *pool.x.shape[1:])
        ys = pool.y[idx].reshape(k, n)
        obs = observe(target.block, target.block_index, xs, ys, spec.scenario, spec.observe, spec.adversary, g)
        kn = len(obs.truth_y)
        out.append(Observed(obs.target.rounds[0].update, idx[:kn], obs.truth_y))
    return out


def control_observations(target: AuditTarget, spec: AuditSpec, pool, records: int) -> list:
    """The battery's positive control: CONTROL_TRIALS updates of the same clients x records as `spec` observes
    (`records` in all), every delta unclipped and no noise, i.e. the plain sum of the raw updates."""
    k = 1 if spec.adversary == "colluding" or spec.observe in ("raw", "clipped") else spec.clients
    cspec = replace(
        spec,
        observe="aggregate",
        adversary="server",
        clients=k,
        records=max(records // k, 1),
        clip_norm=RAW_CLIP,
        noise_multiplier=0.0,
        rounds=1,
    )
    return _simulate_observed(target, cspec, pool, CONTROL_TRIALS, spec.seed + 7)


def _battery(target: AuditTarget, spec: AuditSpec, out: Path, update, truth, log) -> AuditRecord:
    from .battery import BatteryConfig, Observed, run_battery, strongest_attack_verdict

    cfg = BatteryConfig(seed=spec.seed)
    keys = sorted(n for n, _ in target.block.named_parameters())
    if update is not None:
        if truth is None:
            return AuditRecord(
                **_base_record(target, spec),
                metrics={},
                controls={},
                verdict="inconclusive",
                reasons=["no ground truth (--truth) for the update: the battery cannot be scored"],
                scope="the attack battery on the given update file",
            )
        pool, idx = _pool_and_truth(target, spec, *truth)
        observed = [Observed({k: update.delta[k] for k in keys}, idx, truth[1])]
        source = f"the given {update.meta.observation} update ({len(truth[1])} record(s))"
    else:
        pool, _ = _pool_and_truth(target, spec, None, None)
        log(f"battery: {spec.targets} simulated rounds at '{spec.observe}' ({spec.adversary})")
        observed = _simulate_observed(target, spec, pool, spec.targets, spec.seed)
        source = f"{spec.targets} simulated rounds"
    n = len(observed[0].labels)
    controls = None
    if spec.control:
        log(f"positive controls: the battery on {CONTROL_TRIALS} raw noiseless updates of {n} record(s)")
        controls = control_observations(target, spec, pool, n)
    log(f"battery: label inference and matched-filter identification over a pool of {len(pool.x)}")
    tests = run_battery(target.block, target.block_index, observed, pool, controls, cfg)
    verdict, reasons = strongest_attack_verdict(tests, cfg.alpha)
    strongest = min(tests, key=lambda t: t.p_value)
    metrics = {
        "tests": {t.attack: t.to_dict() for t in tests},
        "strongest_attack": strongest.attack,
        "strongest_p_value": strongest.p_value,
        "alpha": cfg.alpha,
        "power": cfg.power,
        "pool_size": len(pool.x),
        "records_per_update": n,
        "updates": len(observed),
    }
    for t in tests:
        metrics[t.attack.replace("-", "_") + "_rate"] = t.rate
    ctrl = {t.attack: t.control for t in tests if t.control}
    server = " " + SERVER_VIEW if spec.observe in ("aggregate", "release") and spec.adversary == "server" else ""
    scope = (
        f"label inference and candidate identification (matched filter over all {len(keys)} trainable "
        f"coordinates, pool of {len(pool.x)} records holding the targets) against '{spec.observe}' of block "
        f"{target.block_index} seen by a {spec.adversary} adversary; {source}, {n} record(s) per update. A pass "
        "says no attack of the battery beat chance although each had the power to see a leak halfway between "
        "chance and certainty; it certifies no DP guarantee." + server
    )
    return AuditRecord(
        **_base_record(target, spec),
        metrics=metrics,
        controls=ctrl,
        verdict=str(verdict),
        reasons=reasons,
        scope=scope,
    )


# ---------------------------------------------------------------------------------------------------
# membership
# ---------------------------------------------------------------------------------------------------
def _population(target: AuditTarget, spec: AuditSpec) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = target.data.x, target.data.y
    if spec.population and spec.population < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(spec.seed))[: spec.population]
        return x[idx], y[idx]
    return x, y


def _membership(target: AuditTarget, spec: AuditSpec, log) -> AuditRecord:
    x, y = _population(target, spec)
    cfg = TrainConfig(epochs=spec.train_epochs, batch_size=min(64, max(8, len(x) // 8)), lr=1e-3, seed=spec.seed)
    mcfg = MembershipConfig(models=spec.models, seed=spec.seed)
    dp = spec.dp_config() if spec.dp_noise_multiplier > 0 else None
    controls: dict[str, dict] = {}
    control_ok, control_reason = True, "positive control skipped"
    if spec.control:
        log("positive control: membership on small, overfitted, non-private blocks")
        cx, cy = x[:64], y[:64]
        ccfg = TrainConfig(epochs=60, batch_size=16, lr=2e-3, seed=spec.seed)
        cres = membership_audit(target.block, target.block_index, cx, cy, ccfg, mcfg)
        best = max(cres.loss_attack["auc"], cres.lira["auc"])
        control_ok = best >= 0.6
        control_reason = (
            f"positive control AUC {best:.3f} ({'>=' if control_ok else '<'} 0.6) on 64 records, 60 epochs, no DP"
        )
        controls["overfit_non_private"] = {
            "passed": control_ok,
            "loss_attack_auc": cres.loss_attack["auc"],
            "lira_auc": cres.lira["auc"],
            "threshold_auc": 0.6,
        }
    log(f"membership: {spec.models} blocks on random halves of {len(x)} records" + (" with DP-SGD" if dp else ""))
    res = membership_audit(target.block, target.block_index, x, y, cfg, mcfg, dp)
    metrics = {"loss_attack": res.loss_attack, "lira": res.lira, "records": res.records, "models": res.models}
    checks = [(True, v) for v in res.dp_violations]
    if dp is None:
        auc = res.lira["auc_interval"] if res.lira["auc"] >= res.loss_attack["auc"] else res.loss_attack["auc_interval"]
        checks.append(
            (
                auc["low"] > 0.55,
                f"best AUC {auc['value']:.3f} (95% CI {auc['low']:.3f}-{auc['high']:.3f}); "
                "a non-private block fails when the whole interval is above 0.55",
            )
        )
    else:
        checks.append(
            (False, f"TPR at 0.1%/1% FPR within e^eps FPR + delta for eps={res.dp_epsilon:.3g}, delta={res.dp_delta:g}")
        )
    verdict, reasons = decide(checks, control_ok, control_reason)
    dpd = {}
    if dp is not None:
        dpd = {
            "noise_multiplier": dp.noise_multiplier,
            "max_grad_norm": dp.max_grad_norm,
            "batch_size": dp.batch_size,
            "steps": dp.steps,
            "epsilon": res.dp_epsilon,
            "delta": res.dp_delta,
            "accountant": dp.accountant,
        }
    scope = (
        f"membership of records in block {target.block_index}'s training set, scored at the block's own noise levels "
        f"({spec.models} models on random halves of {len(x)} records of '{target.data.name}', {spec.train_epochs} "
        "epochs"
        + (", record-level DP-SGD" if dp else ", no DP")
        + "); the auditor trains the blocks itself from the audited weights."
    )
    return AuditRecord(
        **_base_record(target, spec, dp=dpd),
        metrics=metrics,
        controls=controls,
        verdict=verdict,
        reasons=reasons,
        scope=scope,
    )


# ---------------------------------------------------------------------------------------------------
# canary
# ---------------------------------------------------------------------------------------------------
def max_bound(canaries: int, delta: float) -> float:
    """The largest epsilon lower bound `canaries` canaries can give (every guess right, Bonferroni as used)."""
    return canary_mod.max_lower_bound(canaries, delta)


def _canary(target: AuditTarget, spec: AuditSpec, log) -> AuditRecord:
    x, y = _population(target, spec)
    cfg = TrainConfig(epochs=1, batch_size=spec.dp_batch_size, lr=1e-3, seed=spec.seed)

    def run(z: float, accountant: str = "prv"):
        if spec.canary_level == "record":
            return _record_canary(target, spec, x, y, cfg, z, accountant)
        return _client_canary(target, spec, x, y, z, accountant)

    log(f"{spec.canary_level}-level canary run with {spec.canaries} canaries")
    res = run(spec.dp_noise_multiplier if spec.canary_level == "record" else spec.noise_multiplier)
    claimed = spec.claimed_epsilon if spec.claimed_epsilon is not None else res.accountant_epsilon
    lb = res.bound.epsilon_lower_bound
    ceiling = max_bound(spec.canaries, spec.delta)
    controls: dict[str, dict] = {}
    control_ok, control_reason = True, "positive control skipped"
    if spec.control:
        # could this audit refute the claim at all? The same canaries with almost no noise must bound epsilon above it
        log("positive control: the same canaries with almost no noise (z = 0.05)")
        c = run(0.05, accountant="rdp")  # PRV is very slow at z = 0.05; the control's own epsilon is not used
        control_ok = c.bound.epsilon_lower_bound > claimed
        control_reason = (
            f"low-noise control: bound {c.bound.epsilon_lower_bound:.2f} "
            f"{'above' if control_ok else 'NOT above'} the claimed epsilon {claimed:.2f} "
            + (
                "(the audit can refute the claim)"
                if control_ok
                else "(the audit cannot refute this claim: more canaries or steps needed)"
            )
        )
        controls["low_noise"] = {
            "passed": control_ok,
            "epsilon_lower_bound": c.bound.epsilon_lower_bound,
            "claimed_epsilon": claimed,
            "ceiling": ceiling,
        }
    checks = [
        (
            lb > claimed,
            f"epsilon lower bound {lb:.3f} ({res.bound.confidence:.1%} confidence, delta={spec.delta:g}) "
            f"{'EXCEEDS' if lb > claimed else 'is below'} the claimed epsilon {claimed:.3f}"
            + ("" if spec.claimed_epsilon is None else f" (accountant: {res.accountant_epsilon:.3f})"),
        )
    ]
    if isinstance(res, canary_mod.RecordCanaryResult):  # the DP noise measured on untouched coordinates
        checks.append(res.noise_check())
    verdict, reasons = decide(checks, control_ok, control_reason)
    if spec.control and control_reason not in reasons:
        reasons.append(control_reason)
    metrics = {
        "epsilon_lower_bound": lb,
        "accountant_epsilon": res.accountant_epsilon,
        "claimed_epsilon": claimed,
        "bound": res.bound.to_dict(),
        "ceiling": ceiling,
    }
    if isinstance(res, canary_mod.RecordCanaryResult):
        metrics["noise"] = res.noise.to_dict()
        metrics["canary_seconds"] = res.seconds
    if spec.canary_level == "record":
        dp = res.dp_report | {"canaries": spec.canaries}
        secagg = _base_record(target, spec)["secagg"] | {"secure_aggregation": False}
        scope = (
            f"record-level DP-SGD of block {target.block_index} as run by train_block_dp (Opacus Poisson sampling, "
            f"ghost clipping, noise) with {spec.canaries} white-box Dirac gradient canaries scored by the likelihood "
            f"ratio of their per-step privatized gradients, and the DP noise measured on "
            f"{canary_mod.WITNESS_COORDINATES} coordinates no record touches; one run, "
            f"{len(x)} real records. A pass does not prove the claim, it fails to refute it."
        )
    else:
        dp = {}
        secagg = _base_record(target, spec)["secagg"] | {
            "rounds": spec.rounds,
            "epsilon": res.accountant_epsilon,
            "delta": spec.delta,
            "canaries": spec.canaries,
        }
        scope = (
            f"client-level release as the federation computes it (mechanisms.clip_update "
            f"C={spec.clip_norm}, mean, mechanisms.add_central_noise z={spec.noise_multiplier}) of "
            f"{spec.clients} real clients plus canary clients, {spec.rounds} round(s). A pass does not prove the claim."
        )
    return AuditRecord(
        **_base_record(target, spec, dp=dp, secagg=secagg),
        metrics=metrics,
        controls=controls,
        verdict=verdict,
        reasons=reasons,
        scope=scope,
    )


def _record_canary(target, spec, x, y, cfg, z, accountant):
    return canary_mod.record_canary_audit(
        target.block,
        target.block_index,
        x,
        y,
        cfg,
        replace(spec.dp_config(z), accountant=accountant),
        canaries=spec.canaries,
        seed=spec.seed,
    )


def client_updates(target: AuditTarget, spec: AuditSpec, x, y, seed: int) -> list[dict]:
    """spec.clients real clients' clipped raw updates on disjoint records from (x, y)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[: spec.clients * spec.records].reshape(spec.clients, spec.records)
    return [
        clip_delta(local_update(target.block, target.block_index, x[i], y[i], spec.training, g)[0], spec.clip_norm)[0]
        for i in idx
    ]


def federation_release(keys: list[str], clip_norm: float, noise_multiplier: float, seed: int):
    """The federation's own release mechanism, as the server runs it: every client's delta clipped by
    `mechanisms.clip_update`, the mean over the K clients aggregated, then `mechanisms.add_central_noise`
    (std z C / K)."""
    rng = np.random.default_rng(seed)

    def fn(updates: list[dict], g: torch.Generator) -> dict:
        arrays = [mechanisms.clip_update([u[k].numpy() for k in keys], clip_norm)[0] for u in updates]
        mean = [np.mean([a[i] for a in arrays], axis=0) for i in range(len(keys))]
        noised, _ = mechanisms.add_central_noise(mean, clip_norm, noise_multiplier, len(updates), rng)
        out = {k: torch.zeros_like(v) for k, v in updates[0].items()}
        out.update({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in zip(keys, noised)})
        return out

    return fn


def _client_canary(target, spec, x, y, z, accountant):
    keys = sorted(n for n, _ in target.block.named_parameters())
    real = client_updates(target, spec, x, y, spec.seed)
    release_fn = federation_release(keys, spec.clip_norm, z, spec.seed)
    return canary_mod.client_canary_audit(
        real,
        keys,
        release_fn,
        spec.clip_norm,
        z,
        spec.delta,
        spec.canaries,
        spec.rounds,
        spec.seed,
        accountant=accountant,
    )


# ---------------------------------------------------------------------------------------------------
# noise conformance
# ---------------------------------------------------------------------------------------------------
def simulated_release(target: AuditTarget, spec: AuditSpec) -> BlockUpdate:
    keys = sorted(n for n, _ in target.block.named_parameters())
    real = client_updates(target, spec, target.data.x, target.data.y, spec.seed)
    g = torch.Generator().manual_seed(spec.seed + 1)
    base = UpdateMeta(
        block_index=target.block_index,
        noise_interval=tuple(target.info.get("training_interval", (0, 0))),
        observation="release",
        local=spec.training.to_dict(),
    )
    if spec.observe == "aggregate":
        from .updates import aggregate as agg

        return BlockUpdate(
            agg(real),
            replace(
                base,
                observation="aggregate",
                clip_norm=spec.clip_norm,
                clients_aggregated=spec.clients,
                reduction="sum",
            ),
        )
    released = federation_release(keys, spec.clip_norm, spec.noise_multiplier, spec.seed + 1)(real, g)
    return BlockUpdate(released, release_meta(base, spec.clip_norm, spec.clients, spec.noise_multiplier))


def _conformance(target: AuditTarget, spec: AuditSpec, update: BlockUpdate | None, log) -> AuditRecord:
    keys = sorted(n for n, _ in target.block.named_parameters())
    if update is None:
        log(f"simulating a {spec.observe} of {spec.clients} clients (z={spec.noise_multiplier}, C={spec.clip_norm})")
        update = simulated_release(target, spec)
    res = noise_conformance(update, keys, seed=spec.seed)
    meta = update.meta
    controls: dict[str, dict] = {}
    control_ok, control_reason = True, "positive control skipped"
    if spec.control and meta.noise_multiplier == 0:  # a norm check: it must reject twice the bound, accept half of it

        def scaled(f: float) -> BlockUpdate:
            return BlockUpdate(
                {k: v * f * res.norm_bound / max(res.norm, 1e-30) for k, v in update.delta.items()}, meta
            )

        over, under = (
            noise_conformance(scaled(2.0), keys, seed=spec.seed),
            noise_conformance(scaled(0.5), keys, seed=spec.seed),
        )
        control_ok = under.passed and not over.passed
        control_reason = (
            f"controls: half the norm bound {'accepted' if under.passed else 'REJECTED'}, twice the bound "
            f"{'rejected' if not over.passed else 'NOT rejected'}"
        )
        controls["norm_bound"] = {"passed": control_ok}
    if spec.control and meta.noise_multiplier > 0:
        g = torch.Generator().manual_seed(spec.seed + 2)
        std = meta.central_noise_std
        synth = lambda s: BlockUpdate({k: s * torch.randn(v.shape, generator=g) for k, v in update.delta.items()}, meta)  # noqa: E731
        calib = noise_conformance(synth(std), keys, seed=spec.seed)
        power = noise_conformance(synth(std * 0.8), keys, seed=spec.seed)
        control_ok = calib.passed and not power.passed
        control_reason = (
            f"controls: exact noise {'accepted' if calib.passed else 'REJECTED'}, 20% too little noise "
            f"{'rejected' if not power.passed else 'NOT rejected'}"
        )
        controls["calibration"] = {"passed": calib.passed, "measured_std": calib.measured_std}
        controls["power_80pct_noise"] = {"passed": not power.passed, "measured_std": power.measured_std}
    checks = [(True, f) for f in res.failures] or [
        (
            False,
            f"noise std {res.measured_std:.4g} within "
            f"[{res.accepted_std[0]:.4g}, {res.accepted_std[1]:.4g}] "
            f"(expected {res.expected_std:.4g})"
            if res.expected_std > 0
            else f"aggregate norm {res.norm:.4g} <= K C = {res.norm_bound:.4g}",
        )
    ]
    verdict, reasons = decide(checks, control_ok, control_reason)
    metrics = res.to_dict()
    secagg = {
        "clients_aggregated": meta.clients_aggregated,
        "clip_norm": meta.clip_norm,
        "reduction": meta.reduction,
        "noise_multiplier": meta.noise_multiplier,
        "central_noise_std": meta.central_noise_std,
        "secure_aggregation": True,
    }
    scope = (
        f"the Gaussian noise and clip bound of one {meta.observation} of block {meta.block_index} "
        f"({res.coordinates} parameter coordinates) against its sidecar; says nothing about the accountant."
    )
    return AuditRecord(
        **_base_record(target, spec, secagg=secagg, rounds=[meta.round or 0]),
        metrics=metrics,
        controls=controls,
        verdict=verdict,
        reasons=reasons,
        scope=scope,
    )
