"""`dbserver start | run new | status | nodes`: the operator's federation commands."""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import RunConfig, SecAggConfig
from .launcher import ServerHome, default_home, register_node, start_superlink, submit_run

console = Console(soft_wrap=True)
run_app = typer.Typer(help="Create and follow federated training runs.", no_args_is_help=True)
nodes_app = typer.Typer(help="Companies' nodes: approve (register their key) or revoke.", no_args_is_help=True)


def fail(msg: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def start(
    host: str = typer.Option("127.0.0.1", help="address the SuperLink binds to (0.0.0.0 to face the network)"),
    port: int = typer.Option(9092, help="SuperLink port (Fleet API for companies)"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS: local tests only"),
    node_auth: bool = typer.Option(True, help="only nodes whose key the operator approved may connect"),
    home: Path = typer.Option(default_home(), help="server home (certificates, runs, state)"),
) -> None:
    """Start the SuperLink (TLS and node authentication on by default) and keep it running."""
    if insecure:
        console.print("[bold red]WARNING: --insecure: the SuperLink runs WITHOUT TLS. Traffic is unencrypted and "
                      "nodes are not authenticated. Never use this across a network.[/bold red]")
    sh = ServerHome(home)
    proc = start_superlink(sh, host, port, insecure, node_auth and not insecure)
    console.print(f"SuperLink listening on {host}:{port} (log: {home / 'superlink.log'})")
    if not insecure:
        console.print(f"companies need the CA certificate: {sh.tls.ca}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sys.exit(proc.wait())
    except (KeyboardInterrupt, SystemExit):
        proc.terminate()
        proc.wait(timeout=20)


@run_app.command("new")
def run_new(
    task: str = typer.Option("mnist", help="task preset (dblocks.shared.presets)"),
    blocks: int = typer.Option(4, help="number of blocks B"),
    rounds: int = typer.Option(10, help="federated rounds"),
    cohort: int = typer.Option(3, help="companies per block cohort"),
    min_cohort: int = typer.Option(2, help="a block with fewer live companies is skipped that round"),
    scheduler: str = typer.Option("round-robin", help="round-robin | capacity"),
    record_noise: float = typer.Option(1.0, help="DP-SGD noise multiplier at each company"),
    record_clip: float = typer.Option(1.0, help="DP-SGD per-example clip"),
    sample_rate: float = typer.Option(0.1, help="DP-SGD Poisson sampling rate"),
    steps: int = typer.Option(20, help="DP-SGD steps per round"),
    lr: float = typer.Option(1e-3, help="company learning rate (AdamW)"),
    update_clip: float = typer.Option(1.0, help="client-level L2 clip of a block update"),
    central_noise: float = typer.Option(0.0, help="central noise multiplier on the aggregate"),
    server_lr: float = 1.0,
    secagg_threshold: float = typer.Option(0.6, help="share of a cohort needed to unmask"),
    init_model: Optional[Path] = typer.Option(None, help="start from these blocks (e.g. pretrained on public data)"),
    registry_url: Optional[str] = typer.Option(None, envvar="DBLOCKS_REGISTRY_URL"),
    token: Optional[str] = typer.Option(None, envvar="DBLOCKS_REGISTRY_TOKEN"),
    wait: bool = typer.Option(True, help="follow the run until it ends"),
    home: Path = typer.Option(default_home()),
    run_id: Optional[str] = typer.Option(None, help="resume this run (after a crash) instead of creating one"),
) -> None:
    """Start a federated run on the SuperLink that `dbserver start` runs."""
    sh = ServerHome(home)
    if not (sh.flwr_home / "config.toml").exists():
        fail(f"no SuperLink configured under {home}: run `dbserver start` first")
    registry = None
    if registry_url:
        from dblocks.server.registry.client import RegistryClient

        registry = RegistryClient(registry_url, token)
    cfg = RunConfig(run_id="pending", task=task, num_blocks=blocks, num_rounds=rounds, cohort_size=cohort,
                    min_cohort=min_cohort, scheduler=scheduler, record_noise=record_noise, record_clip=record_clip,
                    record_sample_rate=sample_rate, record_steps=steps, lr=lr, update_clip=update_clip,
                    central_noise=central_noise, server_lr=server_lr, secagg=SecAggConfig(threshold=secagg_threshold),
                    init_model_dir=str(init_model.resolve()) if init_model else None, registry_url=registry_url,
                    registry_token=token)
    if run_id is None:
        if registry:
            from dataclasses import asdict

            from dblocks.shared.presets import get_preset

            p = get_preset(task)
            run = registry.create_run(task=task, dataset={"name": p.dataset, "split": "companies' own data"}, num_blocks=blocks,
                                      schedule=p.noise_schedule(blocks).to_dict(), secagg=asdict(cfg.secagg),
                                      dp={k: v for k, v in asdict(cfg).items() if k.startswith(("record_", "update_", "central_", "delta", "accountant"))},
                                      num_rounds=rounds)
            run_id = str(run["id"])
        else:
            run_id = uuid.uuid4().hex[:12]
    cfg = RunConfig(**{**cfg.__dict__, "run_id": run_id,
                       "checkpoint_dir": str(sh.run_dir(run_id) / "checkpoints")})
    log = sh.run_dir(run_id) / "serverapp.log"
    proc = submit_run(sh, cfg, log=log)
    console.print(f"run [bold]{run_id}[/bold] submitted: {blocks} blocks, {rounds} rounds; log {log}")
    if not wait:
        return
    code = proc.wait()
    status = read_status(sh, run_id)
    console.print_json(json.dumps(status))
    if code != 0 or status.get("status") != "finished":
        fail(f"run {run_id} did not finish (flwr exit {code}, status {status.get('status')}); see {log}", code=1)


def read_status(sh: ServerHome, run_id: str) -> dict:
    p = sh.run_dir(run_id) / "status.json"
    return json.loads(p.read_text()) if p.exists() else {"run_id": run_id, "status": "unknown"}


def status(
    run_id: Optional[str] = typer.Argument(None, help="a run id (default: all runs under the home)"),
    home: Path = typer.Option(default_home()),
) -> None:
    """Show runs: status, rounds done, accuracy, per-block versions."""
    sh = ServerHome(home)
    runs = [run_id] if run_id else sorted(p.name for p in (home / "runs").glob("*") if p.is_dir())
    if not runs:
        fail(f"no runs under {home}", code=1)
    t = Table("run", "status", "rounds done", "last accuracy", "blocks (round)")
    for r in runs:
        st = read_status(sh, r)
        rounds_file = sh.run_dir(r) / "checkpoints" / "rounds.json"
        blk = json.loads(rounds_file.read_text()) if rounds_file.exists() else {}
        hist = st.get("rounds") or []
        t.add_row(r, st.get("status", "?"), str(len(hist)), f"{hist[-1].get('test_accuracy', float('nan')):.4f}" if hist else "-",
                  " ".join(f"{b}:{v['round']}" for b, v in sorted(blk.items())))
    console.print(t)


@nodes_app.command("approve")
def nodes_approve(
    public_key: Path = typer.Argument(..., help="the company's node public key (node.key.pub)"),
    name: Optional[str] = typer.Option(None, help="display name"),
    home: Path = typer.Option(default_home()),
) -> None:
    """Approve a company: register its node key with the SuperLink (no certificate is reissued)."""
    if not public_key.exists():
        fail(f"{public_key}: no such public key file")
    try:
        out = register_node(ServerHome(home), public_key, name)
    except RuntimeError as e:
        fail(str(e))
    console.print(out or f"registered {public_key}")
