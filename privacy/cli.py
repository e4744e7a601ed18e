"""`dbaudit`: leakage audits of DiffusionBlocks block updates (the privacy researchers' toolkit).

    dbaudit run --attack closed-form --observe raw --block-dir MODEL --block-index 0
    dbaudit run --attack inversion --observe release --clients 8 --noise-multiplier 1 --block-dir MODEL
    dbaudit run --attack noise-conformance --observe release --update rel.safetensors --block-dir MODEL
    dbaudit run --attack canary --observe clipped --dp-noise-multiplier 1.2 --block-dir MODEL
    dbaudit run ... --block-version ID --registry URL --token T      (fetches the block, posts the audit)
    dbaudit make-update --observe release --clients 8 --block-dir MODEL --out rel.safetensors
    dbaudit suite --block-dir MODEL --out audits/   ;   dbaudit report audits/ --out report.html

Exit status, every command: 0 pass (make-update, report: done), 1 fail (the audit found more leakage than
the claim allows), 3 inconclusive (the positive control failed or there was nothing to score against), 2 bad
usage or input (one line saying what to change), 4 internal error (a bug in dbaudit: one line, `--debug` for
the traceback). A crash never exits 1, which would read as a "fail" verdict.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import NoReturn, ParamSpec

import typer
from rich.console import Console

from dblocks.shared.clierrors import USER_ERRORS, SafeTyper, bounded, debug_requested

P = ParamSpec("P")
INTERNAL_ERROR = 4  # exit status of a bug in dbaudit (1 is the "fail" verdict, 2 bad input, 3 inconclusive)


class _OneLineUsageErrors(typer.Typer):
    """Click's usage errors (a missing option, a value of the wrong type) as one line and exit 2, instead of the
    usage text and a framed box; help (no arguments, --help) is printed as usual."""

    def __call__(self, *args, **kwargs):
        import click

        kwargs.setdefault("standalone_mode", False)
        try:
            rv = super().__call__(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            print(e.ctx.get_help() if e.ctx is not None else e.format_message())
            sys.exit(0)
        except click.ClickException as e:
            where = f"; see {e.ctx.command_path} --help" if getattr(e, "ctx", None) is not None else ""
            print(f"error: {bounded(e.format_message().rstrip('.'))}{where}", flush=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:  # end of input at a prompt: as an interrupt (never 1, the "fail" verdict)
            print("aborted", file=sys.stderr)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


class AuditTyper(SafeTyper, _OneLineUsageErrors):
    """SafeTyper (one line per error) with one-line usage errors, remembering whether --debug was asked for
    (SafeTyper removes it from argv before parsing)."""

    debug = False

    def __call__(self, *args, **kwargs):
        AuditTyper.debug = debug_requested(sys.argv)
        return super().__call__(*args, **kwargs)


app = AuditTyper(help="Leakage audits against DiffusionBlocks block updates.", no_args_is_help=True)
# one line per uncaught error, no traceback (locals would print private data; --debug prints it)
console = Console(soft_wrap=True)

ATTACK_HELP = (
    "closed-form | inversion | dlg | idlg | dlg-scales | battery (label inference + matched-filter identification)"
    " | membership | canary | noise-conformance"
)
OBSERVE_HELP = "raw | clipped | aggregate | release | weights | sequence"


def _fail(msg: str) -> NoReturn:
    console.print(f"[red]error:[/red] {bounded(msg)}", highlight=False)
    raise typer.Exit(2)


@contextmanager
def _exit_codes() -> Iterator[None]:
    """The body of every command: a verdict's typer.Exit passes; an error about the input (a missing or
    unreadable file, data or a registry that refuses, a value out of range: ValueError) exits 2 with one line;
    anything else is a bug in dbaudit and exits 4 with one line (never 1, the "fail" verdict). With --debug or
    DBLOCKS_DEBUG=1 the traceback is printed first; the exit status stays the same."""
    from dblocks.shared.wire import BlockIntegrityError

    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:
        if AuditTyper.debug or os.environ.get("DBLOCKS_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        reg = sys.modules.get("dblocks.shared.registry_client")
        registry_errors = (reg.RegistryError,) if reg is not None else ()
        if isinstance(e, (*USER_ERRORS, ValueError, BlockIntegrityError, *registry_errors)):
            _fail(str(e))
        console.print(
            f"[red]internal error[/red] ({type(e).__name__}: {bounded(str(e))}): a bug in dbaudit, not a verdict"
            + ("" if AuditTyper.debug else " (add --debug for the traceback)"),
            highlight=False,
        )
        raise typer.Exit(INTERNAL_ERROR) from None


def exit_codes(command: Callable[P, None]) -> Callable[P, None]:
    """Decorator: run the command inside `_exit_codes` (the signature stays visible to typer)."""

    @functools.wraps(command)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> None:
        with _exit_codes():
            command(*args, **kwargs)

    return wrapped


@app.callback()
def main() -> None:
    """Leakage audits against DiffusionBlocks block updates."""


# ---------------------------------------------------------------------------------------------------
# loading what is audited
# ---------------------------------------------------------------------------------------------------
def _block_info(spec, block_id: str | None = None) -> dict:
    return {
        "id": block_id or spec.sha256[:16],
        "task": spec.task,
        "block_index": spec.block_index,
        "num_blocks": spec.num_blocks,
        "owned_interval": list(spec.owned_interval),
        "training_interval": list(spec.training_interval),
        "sha256": spec.sha256,
    }


def _dataset(name: str | None, task: str):
    from dblocks.shared.data import load_dataset
    from dblocks.shared.presets import PRESETS

    if name is None:
        if task not in PRESETS:
            _fail(f"the block's task {task!r} is not a preset: say which records the auditor holds with --data")
        p = PRESETS[task]
        return load_dataset(p.dataset, image_size=p.image_size)
    return load_dataset(name)


def _load_target(
    block_dir: Path | None,
    block_index: int,
    data: str | None,
    block_version: str | None,
    registry: str | None,
    token: str | None,
):
    from dblocks.privacy.attacks.runner import AuditTarget
    from dblocks.shared.data import DataError
    from dblocks.shared.wire import BlockIntegrityError, load_block

    try:
        if block_version is not None:
            if not registry:
                _fail("--block-version needs --registry URL (and --token)")
            spec, block = _fetch_block(registry, token, block_version)
            info = _block_info(spec, block_version)
        elif block_dir is not None:
            spec, block = load_block(block_dir, block_index)
            info = _block_info(spec)
        else:
            _fail("say what to audit: --block-dir MODEL_DIR [--block-index I] or --block-version ID --registry URL")
        ds = _dataset(data, spec.task)
    except (FileNotFoundError, BlockIntegrityError, DataError, ValueError) as e:
        _fail(str(e))
    if tuple(ds.x.shape[1:]) != _input_shape(block):
        _fail(
            f"records of {ds.name!r} have shape {tuple(ds.x.shape[1:])}, the block takes {_input_shape(block)}: "
            "pass --data with the block's kind of records"
        )
    return AuditTarget(block, spec.block_index, info, ds)


def _input_shape(block) -> tuple:
    a = block.arch
    return (a.image_channels, a.image_size, a.image_size) if a.input == "image" else (a.num_features,)


def _registry(registry: str, token: str | None):
    from dblocks.shared.registry_client import RegistryClient

    if not token:
        _fail("the registry needs a token: --token T (or DBLOCKS_TOKEN); a researcher token can post audits")
    return RegistryClient(registry, token, connect_retries=2)  # a researcher waits seconds, not a minute


def _version_id(block_version: str):
    return int(block_version) if block_version.isdigit() else block_version


def _fetch_block(registry: str, token: str | None, version_id: str):
    """The block version's spec and verified weights from the registry (kept thin: the registry owns the API)."""
    from dblocks.shared.wire import BlockSpec, unpack_block

    client = _registry(registry, token)
    version = client.get_block_version(_version_id(version_id))
    spec = BlockSpec.from_json(version["spec_json"])
    return spec, unpack_block(spec, client.download_weights(_version_id(version_id), version.get("sha256")))


def _post_audit(registry: str, token: str | None, version_id: str, record, out: Path) -> dict:
    """Post the record: config carries the DP/SecAgg settings, rounds, code version, block and scope; controls the
    reasons; the PNG grids go as artifacts."""
    artifacts = {name: (out / name).read_bytes() for name in record.artifacts if (out / name).exists()}
    d = record.to_dict()
    config = d["config"] | {
        "dp": d["dp"],
        "secagg": d["secagg"],
        "rounds": d["rounds"],
        "code_version": d["code_version"],
        "block": d["block"],
        "scope": d["scope"],
        "seeds": d["seeds"],
    }
    seeds = [d["seeds"]["audit"], *d["seeds"].get("targets", [])]
    return _registry(registry, token).post_audit(
        block_version_id=_version_id(version_id),
        attack=d["attack"],
        observation_point=d["observation_point"],
        adversary=d["adversary"],
        config=config,
        config_hash=d["config_hash"],
        seeds=seeds,
        metrics=d["metrics"],
        controls=d["controls"] | {"reasons": d["reasons"]},
        verdict=d["verdict"],
        artifacts=artifacts,
    )


def _records_behind(upd, truth: Path | None, truth_records, records: int | None) -> int:
    """Records per client behind an update: --records if given, else the sidecar's `local.records` (written by
    make-update), else the --truth file's count / K, else 1; exit 2 when these disagree."""
    k = upd.meta.clients_aggregated
    known = upd.meta.local.get("records")
    if truth_records is not None:
        n = len(truth_records[1])
        if n % k or (known is not None and n != known * k):
            _fail(
                f"{truth} holds {n} records, but the update aggregates {k} client(s)"
                + (f" of {known} records each" if known is not None else "")
                + ": pass the truth file written with this update"
            )
        known = n // k
    if records is not None and known is not None and records != known:
        _fail(f"--records {records}, but the update holds {known} record(s) per client: pass --records {known}")
    if records is None and known is not None and known != 1:
        console.print(f"[yellow]note:[/yellow] {known} records per client (from the update/truth files)")
    return records or known or 1


def _load_truth(path: Path | None):
    if path is None:
        return None
    import numpy as np
    import torch

    if not path.exists():
        _fail(f"{path}: no such truth file (an NPZ with arrays x and y, as written by `dbaudit make-update`)")
    with np.load(path) as z:
        if "x" not in z or "y" not in z:
            _fail(f"{path}: needs arrays 'x' (records) and 'y' (labels)")
        return torch.from_numpy(z["x"]).float(), torch.from_numpy(z["y"]).long()


# ---------------------------------------------------------------------------------------------------
# options shared by run / suite / make-update
# ---------------------------------------------------------------------------------------------------
def _spec(**kw):
    from dblocks.privacy.attacks.runner import AuditSpec

    try:
        return AuditSpec(**kw)
    except ValueError as e:
        _fail(str(e))


def _finish(record, out: Path, registry=None, token=None, block_version=None) -> None:
    colour = {"pass": "green", "fail": "red", "inconclusive": "yellow"}[record.verdict]
    console.print(f"[bold {colour}]{record.summary()}[/]")
    console.print(f"record: {out / 'audit.json'}  (config hash {record.config_hash[:12]})")
    if block_version is not None and registry:
        _post_audit(registry, token, block_version, record, out)
        console.print(f"posted to {registry} for block version {block_version}")
    raise typer.Exit(record.exit_code)


@app.command()
@exit_codes
def run(
    attack: str = typer.Option(..., help=ATTACK_HELP),
    observe: str = typer.Option(..., help=OBSERVE_HELP),
    adversary: str = typer.Option("server", help="server (honest but curious) | colluding (the other K-1 clients)"),
    block_dir: Path | None = typer.Option(None, help="model directory holding block-I.json/.safetensors"),
    block_index: int = typer.Option(0, help="which block of --block-dir"),
    update: Path | None = typer.Option(None, help="an update file (safetensors + .json sidecar) to audit as given"),
    truth: Path | None = typer.Option(None, help="NPZ (x, y) of the records behind --update, to score against"),
    data: str | None = typer.Option(None, help="records the auditor holds (default: the block's preset dataset)"),
    out: Path = typer.Option(Path("audit-out"), help="directory for audit.json and PNGs"),
    clients: int = typer.Option(1, help="K clients per round"),
    records: int | None = typer.Option(
        None, help="records per client (default: the --update's own count or the --truth file's / K, else 1)"
    ),
    local_steps: int = typer.Option(1, help="local steps per round"),
    local_lr: float = typer.Option(0.01, help="local learning rate"),
    local_optimizer: str = typer.Option("sgd", help="sgd | adam"),
    clip_norm: float = typer.Option(1.0, help="client-level L2 clip C"),
    noise_multiplier: float = typer.Option(0.0, help="central noise multiplier z (noise std z C on the sum)"),
    rounds: int = typer.Option(1, help="rounds (sequence observation; client-level canaries)"),
    targets: int = typer.Option(8, help="independent simulated rounds to attack"),
    iterations: int = typer.Option(300, help="gradient-matching iterations"),
    restarts: int = typer.Option(1, help="gradient-matching restarts"),
    control: bool = typer.Option(True, help="run the positive control"),
    dp_noise_multiplier: float = typer.Option(
        1.0, help="record-level DP-SGD noise multiplier (canary, membership; 0: no DP)"
    ),
    dp_max_grad_norm: float = typer.Option(1.0, help="record-level per-example clip"),
    dp_batch_size: int = typer.Option(64, help="expected Poisson batch"),
    dp_steps: int = typer.Option(200, help="DP-SGD steps"),
    delta: float = typer.Option(1e-5, help="delta of the privacy claim"),
    claimed_epsilon: float | None = typer.Option(None, help="the epsilon claimed (default: the accountant's)"),
    canaries: int = typer.Option(1000, help="canaries (one-run audit)"),
    canary_level: str = typer.Option("record", help="record (DP-SGD canaries) | client (canary clients)"),
    models: int = typer.Option(8, help="membership: target + shadow blocks"),
    train_epochs: int = typer.Option(20, help="membership: epochs per block"),
    population: int = typer.Option(0, help="membership/canary: records used (0: all)"),
    seed: int = typer.Option(0),
    block_version: str | None = typer.Option(None, help="registry block version to audit"),
    registry: str | None = typer.Option(None, help="registry base URL"),
    token: str | None = typer.Option(None, envvar="DBLOCKS_TOKEN", help="registry token"),
) -> None:
    """Run one audit and write its record; exit 1 when it fails."""
    import torch

    from dblocks.privacy.attacks.runner import run_audit
    from dblocks.privacy.attacks.updates import check_update_matches, load_update

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    spec = _spec(
        attack=attack,
        observe=observe,
        adversary=adversary,
        clients=clients,
        records=records or 1,
        local_steps=local_steps,
        local_lr=local_lr,
        local_optimizer=local_optimizer,
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        rounds=rounds,
        targets=targets,
        iterations=iterations,
        restarts=restarts,
        control=control,
        dp_noise_multiplier=dp_noise_multiplier,
        dp_max_grad_norm=dp_max_grad_norm,
        dp_batch_size=dp_batch_size,
        dp_steps=dp_steps,
        delta=delta,
        claimed_epsilon=claimed_epsilon,
        canaries=canaries,
        canary_level=canary_level,
        models=models,
        train_epochs=train_epochs,
        population=population,
        seed=seed,
    )
    target = _load_target(block_dir, block_index, data, block_version, registry, token)
    truth_records = _load_truth(truth)
    upd = None
    if update is not None:
        try:
            upd = load_update(update)
            check_update_matches(upd, target.block)
        except (FileNotFoundError, ValueError) as e:
            _fail(str(e))
        if upd.meta.observation != observe:
            console.print(f"[yellow]note:[/yellow] the update is a '{upd.meta.observation}', audited as '{observe}'")
        spec = replace(
            spec,
            clients=upd.meta.clients_aggregated,
            records=_records_behind(upd, truth, truth_records, records),
            clip_norm=upd.meta.clip_norm or spec.clip_norm,
            noise_multiplier=upd.meta.noise_multiplier,
        )
    record = run_audit(target, spec, out, update=upd, truth=truth_records, progress=lambda m: console.print(m))
    _finish(record, out, registry, token, block_version)


@app.command("make-update")
@exit_codes
def make_update(
    block_dir: Path = typer.Option(..., help="model directory"),
    block_index: int = typer.Option(0),
    observe: str = typer.Option("clipped", help="raw | clipped | aggregate | release"),
    out: Path = typer.Option(..., help="update file to write (.safetensors; sidecar .json and .truth.npz beside)"),
    data: str | None = typer.Option(None),
    clients: int = typer.Option(1),
    records: int = typer.Option(1),
    local_steps: int = typer.Option(1),
    local_lr: float = typer.Option(0.01),
    clip_norm: float = typer.Option(1.0),
    noise_multiplier: float = typer.Option(0.0),
    seed: int = typer.Option(0),
) -> None:
    """Produce an update as a federation client / aggregator would (locally, from the auditor's records),
    with the records behind it in OUT.truth.npz."""
    import numpy as np
    import torch

    from dblocks.privacy.attacks.scenario import observe as observe_round
    from dblocks.privacy.attacks.updates import BlockUpdate, save_update

    if observe not in ("raw", "clipped", "aggregate", "release"):
        _fail(f"make-update writes raw | clipped | aggregate | release updates, not {observe!r}")
    spec = _spec(
        attack="closed-form",
        observe=observe,
        clients=clients,
        records=records,
        local_steps=local_steps,
        local_lr=local_lr,
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        seed=seed,
    )
    target = _load_target(block_dir, block_index, data, None, None, None)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(target.data.x), generator=g)[: clients * records]
    xs = target.data.x[idx].reshape(clients, records, *target.data.x.shape[1:])
    ys = target.data.y[idx].reshape(clients, records)
    obs = observe_round(target.block, target.block_index, xs, ys, spec.scenario, observe, "server", g)
    rnd = obs.target.rounds[0]
    delta = {k: torch.zeros_like(v) for k, v in target.block.state_dict().items()} | rnd.update
    meta = replace(
        obs.meta,
        task=target.info["task"],
        base_sha256=target.info["sha256"],
        round=0,
        local=obs.meta.local | {"records": records},  # so that `dbaudit run --update` knows the batch size
    )
    save_update(out, BlockUpdate(delta, meta))
    np.savez(str(out) + ".truth.npz", x=obs.truth_x.numpy(), y=obs.truth_y.numpy())
    console.print(f"wrote {out} (+ .json sidecar, .truth.npz with the {len(obs.truth_y)} records behind it)")


@app.command()
@exit_codes
def suite(
    block_dir: Path | None = typer.Option(None, help="model directory"),
    block_index: int = typer.Option(0),
    data: str | None = typer.Option(None),
    out: Path = typer.Option(Path("audit-suite"), help="one sub-directory per audit"),
    clients: int = typer.Option(8, help="K clients of the audited release"),
    clip_norm: float = typer.Option(1.0),
    noise_multiplier: float = typer.Option(1.0, help="central noise of the audited release"),
    dp_noise_multiplier: float = typer.Option(1.0, help="record-level DP-SGD noise of the canary run"),
    dp_steps: int = typer.Option(200),
    canaries: int = typer.Option(1000),
    targets: int = typer.Option(16),
    iterations: int = typer.Option(300),
    quick: bool = typer.Option(False, help="fewer targets, canaries and iterations (smoke test)"),
    seed: int = typer.Option(0),
    block_version: str | None = typer.Option(None),
    registry: str | None = typer.Option(None),
    token: str | None = typer.Option(None, envvar="DBLOCKS_TOKEN"),
) -> None:
    """The standard battery: label inference and identification against the aggregate as the server sees it and
    the release, positive controls, inversion at every observation point, canaries, conformance."""
    from dblocks.privacy.attacks.record import EXIT_CODES
    from dblocks.privacy.attacks.runner import run_audit

    target = _load_target(block_dir, block_index, data, block_version, registry, token)
    if quick:
        targets, iterations, canaries, dp_steps = (
            min(targets, 4),
            min(iterations, 100),
            min(canaries, 200),
            min(dp_steps, 50),
        )
    k = dict(clients=clients, clip_norm=clip_norm, noise_multiplier=noise_multiplier, targets=targets, seed=seed)
    pool = dict(population=256 if quick else 0)
    battery = [
        # first the server's real view: it unmasks the noiseless sum of clipped deltas and adds the noise itself
        ("battery-aggregate-server", dict(attack="battery", observe="aggregate", **k, **pool)),
        ("battery-release-server", dict(attack="battery", observe="release", **k, **pool)),
        ("battery-release-colluding", dict(attack="battery", observe="release", adversary="colluding", **k, **pool)),
        ("closed-form-raw", dict(attack="closed-form", observe="raw", targets=targets, seed=seed)),
        (
            "inversion-clipped",
            dict(attack="inversion", observe="clipped", targets=max(2, targets // 4), iterations=iterations, seed=seed),
        ),
        (
            "closed-form-aggregate-colluding",
            dict(attack="closed-form", observe="aggregate", adversary="colluding", **k),
        ),
        (
            "dlg-scales-aggregate",
            dict(
                attack="dlg-scales",
                observe="aggregate",
                **(k | {"clients": min(clients, 4), "targets": max(2, targets // 4)}),
                iterations=iterations,
            ),
        ),
        ("closed-form-release", dict(attack="closed-form", observe="release", **k)),
        ("closed-form-release-colluding", dict(attack="closed-form", observe="release", adversary="colluding", **k)),
        ("noise-conformance-release", dict(attack="noise-conformance", observe="release", **k)),
        (
            "canary-record",
            dict(
                attack="canary",
                observe="clipped",
                dp_noise_multiplier=dp_noise_multiplier,
                dp_steps=dp_steps,
                canaries=canaries,
                seed=seed,
            ),
        ),
        ("canary-client", dict(attack="canary", observe="release", canary_level="client", canaries=canaries, **k)),
    ]
    verdicts = []
    for name, kw in battery:
        console.rule(name)
        record = run_audit(target, _spec(**kw), out / name, progress=lambda m: console.print(m))
        colour = {"pass": "green", "fail": "red", "inconclusive": "yellow"}[record.verdict]
        console.print(f"[{colour}]{record.summary()}[/]")
        if block_version is not None and registry:
            _post_audit(registry, token, block_version, record, out / name)
        verdicts.append(record.verdict)
    console.print(f"suite written to {out}; `dbaudit report {out}` renders it")
    overall = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    console.print(
        f"suite verdict: {overall.upper()} ({verdicts.count('pass')} pass, {verdicts.count('fail')} fail, "
        f"{verdicts.count('inconclusive')} inconclusive)"
    )
    raise typer.Exit(EXIT_CODES[overall])


@app.command()
@exit_codes
def report(
    results: list[Path] = typer.Argument(
        ..., help="audit directories / audit.json files / bench JSON (searched recursively)"
    ),
    out: Path = typer.Option(Path("audit-report.html"), help="HTML file to write"),
) -> None:
    """Render audits (and bench sweeps) as one self-contained HTML report with plots."""
    from dblocks.privacy.attacks.report import render_report

    try:
        n = render_report(results, out)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    console.print(f"wrote {out} ({n} audits)")


if __name__ == "__main__":
    app()
