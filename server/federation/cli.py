"""`dbserver start | run new | status | nodes`: the operator's federation commands."""

from __future__ import annotations

import json
import signal
import sys
import uuid
from pathlib import Path
from typing import Literal, NoReturn, cast

import typer
from rich.console import Console
from rich.table import Table

from dblocks.server.ops.launcher import (
    EXPOSE_FLAG,
    ServerHome,
    control_api_refusal,
    default_home,
    is_loopback,
    register_node,
    start_superlink,
    submit_run,
)
from dblocks.shared.schema import RunData, parse_class_list

from .config import RunConfig, SecAggConfig

console = Console(soft_wrap=True)
run_app = typer.Typer(
    help="Create and follow federated training runs.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
nodes_app = typer.Typer(
    help="Companies' nodes: approve (register their key) or revoke.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def parse_blocks(text: str | None) -> tuple[int, ...] | None:
    """ "0,1" -> (0, 1); None -> None (all blocks). A bad list is a one-line error."""
    if text is None:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        fail(f"--adapt-blocks {text!r}: give block indices separated by commas, e.g. 0,1")


def fail(msg: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def start(
    host: str = typer.Option("127.0.0.1", help="zero-config mode: address the SuperLink binds to"),
    port: int = typer.Option(9092, help="zero-config mode: SuperLink port"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS: local tests only"),
    node_auth: bool = typer.Option(True, help="only nodes whose key the operator approved may connect"),
    home: Path = typer.Option(default_home(), help="server home (certificates, runs, state)"),
    expose_control_api_unauthenticated: bool = typer.Option(
        False,
        EXPOSE_FLAG,
        help="zero-config mode: allow a non-loopback --host although that port also serves "
        "Flower's Control API, which has NO authentication (anyone reaching it can submit runs and register nodes)",
    ),
) -> None:
    """Start the server side and keep it running.

    After `dbserver init` (server.toml in the home): the SuperLink on loopback, the Fleet gateway on the
    public address, the registry + dashboard on loopback and the node sync (approved keys -> SuperLink).
    Without it (zero configuration): only the SuperLink on --host/--port, TLS and node keys on."""
    from dblocks.server.ops.provision import load_config

    sh = ServerHome(home)
    try:
        cfg = None if insecure else load_config(sh)
    except ValueError as e:
        fail(str(e))
    if cfg is not None:
        from dblocks.server.ops.stack import run_stack

        sys.exit(run_stack(sh, cfg, console))
    refusal = control_api_refusal(host, expose_control_api_unauthenticated)
    if refusal:
        fail(refusal)
    if insecure:
        console.print(
            "[bold red]WARNING: --insecure: the SuperLink runs WITHOUT TLS. Traffic is unencrypted and "
            "nodes are not authenticated. Never use this across a network.[/bold red]"
        )
    if not insecure:
        from dblocks.server.ops.provision import ensure_directory_key

        # the key that signs the directory of enrolled SecAgg identities exists from the start: a run submitted
        # before the first approval relays the directory as soon as the first company is enrolled
        directory_pub = ensure_directory_key(sh)
    proc = start_superlink(
        sh, host, port, insecure, node_auth and not insecure, expose_control_api=expose_control_api_unauthenticated
    )
    console.print(f"SuperLink listening on {host}:{port} (log: {home / 'superlink.log'})")
    if not is_loopback(host):
        console.print(
            f"[bold red]WARNING: {EXPOSE_FLAG}: {host}:{port} also serves the SuperLink's Control API, "
            "which has NO authentication; run `dbserver init` to expose only the Fleet API "
            "(see the operator guide)[/bold red]"
        )
    if not insecure:
        console.print(f"companies need the CA certificate {sh.tls.ca} and the directory key {directory_pub}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sys.exit(proc.wait())
    except (KeyboardInterrupt, SystemExit):
        proc.terminate()
        proc.wait(timeout=20)


def init(
    host: list[str] = typer.Option(
        ...,
        "--host",
        help="name or IP address companies use to reach this server (repeat for several; they go into the certificate)",
    ),
    gateway_port: int = typer.Option(9092, help="public port of the Fleet gateway (the only one companies need)"),
    gateway_bind: str = typer.Option("0.0.0.0", help="address the Fleet gateway binds to"),
    superlink_port: int = typer.Option(9091, help="SuperLink port, bound to 127.0.0.1 only"),
    registry_port: int = typer.Option(8700, help="registry + dashboard port"),
    registry_bind: str = typer.Option(
        "127.0.0.1",
        help="address the registry binds to; keep it private (in a "
        "container: 0.0.0.0, published on the host's 127.0.0.1 only)",
    ),
    database_url: str = typer.Option("", help="registry database (SQLAlchemy URL); empty: SQLite in the home"),
    rotate_tokens: bool = typer.Option(False, help="issue new admin and service tokens"),
    home: Path = typer.Option(default_home(), help="server home"),
) -> None:
    """Provision the server: CA + server certificate, registry database and tokens, server.toml."""
    from dblocks.server.ops.provision import init_server

    try:
        r = init_server(
            ServerHome(home),
            host,
            gateway_port=gateway_port,
            gateway_host=gateway_bind,
            superlink_port=superlink_port,
            registry_port=registry_port,
            registry_host=registry_bind,
            database_url=database_url,
            rotate_tokens=rotate_tokens,
        )
    except ValueError as e:
        fail(str(e))
    console.print(f"config: {r.config_path}")
    console.print(f"server certificate for: {', '.join(r.certificate_hosts)} (CA kept if it existed)")
    console.print(
        f"give the companies: {r.ca}, {r.directory_key} and the address {r.config.hosts[0]}:{r.config.gateway.port}"
    )
    if r.admin_token:
        console.print(
            f"registry admin token (also in {home / 'secrets' / 'admin.token'}, mode 0600):\n\n    {r.admin_token}\n"
        )
    console.print("next: `dbserver start`, then approve companies with `dbserver nodes approve KEY.pub`")


def gateway(
    upstream: str = typer.Option("127.0.0.1:9091", help="the SuperLink (loopback)"),
    bind: str = typer.Option("0.0.0.0", help="public address to listen on"),
    port: int = typer.Option(9092, help="public port"),
    home: Path = typer.Option(default_home(), help="server home (its tls/ has the certificate)"),
) -> None:
    """Serve only the Fleet API (POST /v1/fleet/*) of the SuperLink on a public address, with TLS."""
    from dblocks.server.ops.gateway import GatewayConfig, serve

    tls = ServerHome(home).tls
    if not tls.exists():
        fail(f"no certificate under {home / 'tls'}: run `dbserver init --host NAME` first")
    serve(bind, port, GatewayConfig(upstream, tls.ca), tls.cert, tls.key)


@run_app.command("new")
def run_new(
    task: str = typer.Option("mnist", help="task preset (dblocks.shared.presets)"),
    num_blocks: int = typer.Option(4, help="number of blocks B"),
    num_rounds: int = typer.Option(10, help="federated rounds"),
    cohort_size: int = typer.Option(3, help="companies per block cohort"),
    min_cohort: int = typer.Option(3, help="a block with fewer live companies is skipped that round"),
    record_noise: float = typer.Option(1.0, help="DP-SGD noise multiplier at each company"),
    record_clip: float = typer.Option(1.0, help="DP-SGD per-example clip"),
    record_sample_rate: float = typer.Option(0.1, help="DP-SGD Poisson sampling rate"),
    record_steps: int = typer.Option(20, help="DP-SGD steps per round"),
    lr: float = typer.Option(1e-3, help="company learning rate (AdamW)"),
    update_clip: float = typer.Option(1.0, help="client-level L2 clip of a block update"),
    central_noise: float = typer.Option(0.0, help="central noise multiplier on the aggregate"),
    server_lr: float = typer.Option(1.0, help="server step on each block's released mean"),
    server_momentum: float = typer.Option(
        0.0, help="heavy-ball momentum on the released means across rounds (post-processing: no privacy cost)"
    ),
    trainable: str = typer.Option(
        "all",
        help="block parameters the companies train: all | bias | head | bias+head | "
        "ada | bias+ada (fewer trained values, less DP noise in an update)",
    ),
    adapt_blocks: str | None = typer.Option(
        None, help="comma list of the blocks the run trains, e.g. 0,1 (default: all; the others keep their weights)"
    ),
    secagg: str = typer.Option("dblocks", help="secure aggregation: dblocks (ours) | flower (Flower's SecAgg+)"),
    secagg_threshold: float = typer.Option(0.6, help="flower mode: share of a cohort needed to unmask"),
    consistency: bool = typer.Option(
        True,
        help="dblocks mode: members sign the survivor view before unmasking (one "
        "more exchange per round; companies may require it)",
    ),
    init_model_dir: Path | None = typer.Option(None, help="start from these blocks (e.g. pretrained on public data)"),
    classes: str | None = typer.Option(
        None,
        help="the run's class list, comma-separated in label-index order (default: the initial model's saved "
        "list, else 0..K-1); every company's labels are mapped through it: give it to them for "
        "`dbclient join --classes`",
    ),
    registry_url: str | None = typer.Option(None, envvar="DBLOCKS_REGISTRY_URL"),
    token: str | None = typer.Option(
        None,
        envvar="DBLOCKS_REGISTRY_TOKEN",
        help="registry token; prefer the environment variable (a command line is visible to every user of the host)",
    ),
    min_nodes: int = typer.Option(0, help="the first round waits until this many companies are connected"),
    wait: bool = typer.Option(True, help="follow the run until it ends"),
    home: Path = typer.Option(default_home()),
    run_id: str | None = typer.Option(None, help="resume this run (after a crash) instead of creating one"),
) -> None:
    """Start a federated run on the SuperLink that `dbserver start` runs."""
    sh = ServerHome(home)
    if not (sh.flwr_home / "config.toml").exists():
        fail(f"no SuperLink configured under {home}: run `dbserver start` first")
    from dblocks.server.ops.provision import (
        directory_key_path,
        directory_path,
        load_config,
        read_secret,
        service_token_path,
    )

    deployed = load_config(sh)
    if registry_url is None and deployed is not None:  # after `dbserver init`: the registry, with the service token
        registry_url, token = deployed.registry_url, token or read_secret(service_token_path(sh))
    # the signed directory of enrolled companies, re-read by the ServerApp every round: also when the run is
    # submitted before the first company is approved (the node sync writes it then)
    signed = directory_path(sh).exists() or directory_key_path(sh).exists()
    directory = str(directory_path(sh)) if signed else None
    registry = None
    if registry_url:
        from dblocks.shared.registry_client import RegistryClient

        registry = RegistryClient(registry_url, token)
    try:
        cfg = RunConfig(
            run_id="pending",
            task=task,
            num_blocks=num_blocks,
            num_rounds=num_rounds,
            cohort_size=cohort_size,
            min_cohort=min_cohort,
            record_noise=record_noise,
            record_clip=record_clip,
            record_sample_rate=record_sample_rate,
            record_steps=record_steps,
            lr=lr,
            update_clip=update_clip,
            central_noise=central_noise,
            server_lr=server_lr,
            server_momentum=server_momentum,
            trainable=trainable,
            adapt_blocks=parse_blocks(adapt_blocks),
            # RunConfig.__post_init__ rejects any other mode than "dblocks" or "flower" (ValueError below)
            secagg=SecAggConfig(
                mode=cast(Literal["dblocks", "flower"], secagg),
                threshold=secagg_threshold,
                consistency=consistency,
                directory=directory,
            ),
            init_model_dir=str(init_model_dir.resolve()) if init_model_dir else None,
            classes=parse_class_list(classes) if classes is not None else None,
            registry_url=registry_url,
            min_nodes=min_nodes,
        )
        from dblocks.shared.presets import get_preset

        run_data = RunData.for_run(get_preset(task).arch.num_classes, cfg.classes, cfg.init_model_dir)
    except (ValueError, KeyError) as e:  # KeyError: an unknown preset
        fail(f"bad run settings: {e.args[0] if e.args else e}")
    if run_id is None:
        if registry:
            from dataclasses import asdict

            from dblocks.shared.presets import get_preset

            p = get_preset(task)
            run = registry.create_run(
                task=task,
                dataset={"name": p.dataset, "split": "companies' own data"},
                num_blocks=num_blocks,
                schedule=p.noise_schedule(num_blocks).to_dict(),
                secagg=asdict(cfg.secagg),
                dp=cfg.dp.model_dump(),
                num_rounds=num_rounds,
            )
            run_id = str(run["id"])
        else:
            run_id = uuid.uuid4().hex[:12]
    cfg = RunConfig(**{**cfg.__dict__, "run_id": run_id, "checkpoint_dir": str(sh.run_dir(run_id) / "checkpoints")})
    log = sh.run_dir(run_id) / "serverapp.log"
    proc = submit_run(sh, cfg, log=log, registry_token=token if registry_url else None)
    console.print(
        f"class list (label index order; companies map their labels through it): {', '.join(run_data.class_names[:20])}"
        + (f" ... ({len(run_data.class_names)} classes)" if len(run_data.class_names) > 20 else "")
    )
    console.print(f"run [bold]{run_id}[/bold] submitted: {num_blocks} blocks, {num_rounds} rounds; log {log}")
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
    run_id: str | None = typer.Argument(None, help="a run id (default: all runs under the home)"),
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
        t.add_row(
            r,
            st.get("status", "?"),
            str(len(hist)),
            f"{hist[-1].get('test_accuracy', float('nan')):.4f}" if hist else "-",
            " ".join(f"{b}:{v['round']}" for b, v in sorted(blk.items())),
        )
    console.print(t)


@nodes_app.command("approve")
def nodes_approve(
    public_key: Path = typer.Argument(..., help="the company's node public key (node.key.pub)"),
    name: str | None = typer.Option(None, help="display name"),
    organisation: str | None = typer.Option(None, help="the company (default: the name)"),
    secagg_identity: str | None = typer.Option(
        None,
        help="the company's SecAgg identity (64 hex, printed by `dbclient keys init` / `dbclient join`): enrolled once",
    ),
    home: Path = typer.Option(default_home()),
) -> None:
    """Approve a company's node key: the SuperLink admits it from now on (no certificate is reissued).

    After `dbserver init` the decision goes to the registry (like the dashboard's Approve button) and the
    node sync registers the key with the SuperLink; without it, the key is registered directly."""
    from dblocks.server.ops.provision import operator_registry

    if not public_key.exists():
        fail(f"{public_key}: no such public key file")
    text = public_key.read_text().strip()
    try:
        reg = operator_registry(ServerHome(home))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if reg is None:
        try:
            out = register_node(ServerHome(home), public_key, name)
        except RuntimeError as e:
            fail(str(e))
        console.print(out or f"registered {public_key}")
        if secagg_identity:
            import re

            from dblocks.server.ops.provision import enroll_secagg_identity

            found = re.search(r"SuperNode (\d+) registered", out or "")
            if not found:
                fail(f"the SuperLink did not say which node id it gave {public_key}; SecAgg identity not enrolled")
            try:
                enroll_secagg_identity(ServerHome(home), found.group(1), secagg_identity.strip().lower())
            except ValueError as e:
                fail(str(e))
            console.print(f"SecAgg identity of node {found.group(1)} enrolled in the signed directory")
        return
    from dblocks.shared.registry_client import RegistryError

    try:
        node = reg.register_node(name or public_key.stem, organisation or name or public_key.stem, text)
        node = reg.approve_node(
            node["id"],
            "dbserver nodes approve",
            secagg_identity=secagg_identity.strip().lower() if secagg_identity else None,
        )
    except (RegistryError, OSError) as e:
        fail(f"the registry refused or is not running (`dbserver start`): {e}")
    console.print(f"approved {node['id']} ({node['display_name']}); the SuperLink admits it within a few seconds")
    _sync_now(home, reg)


@nodes_app.command("revoke")
def nodes_revoke(
    node: str = typer.Argument(..., help="registry node id (node-...) or the node's public key file"),
    reason: str | None = typer.Option(None, help="recorded with the decision"),
    home: Path = typer.Option(default_home()),
) -> None:
    """Revoke a company's node: the SuperLink refuses its next request and the node stops."""
    from dblocks.server.ops.provision import operator_registry
    from dblocks.shared.registry_client import RegistryError

    reg = operator_registry(ServerHome(home))
    if reg is None:
        fail("revoking needs the registry: run `dbserver init` and `dbserver start` first")
    node_id = node
    if Path(node).exists():
        from dblocks.server.registry.fingerprint import canonical_fingerprint

        fp = canonical_fingerprint(Path(node).read_text())
        match = [n for n in reg.list_nodes() if n["fingerprint"] == fp]
        if not match:
            fail(f"no registry node has the key in {node}")
        node_id = match[0]["id"]
    try:
        reg.revoke_node(node_id, reason or "dbserver nodes revoke")
    except RegistryError as e:
        fail(str(e))
    console.print(f"revoked {node_id}")
    _sync_now(home, reg)


@nodes_app.command("list")
def nodes_list(home: Path = typer.Option(default_home())) -> None:
    """Nodes known to the registry, their decision and their state on the SuperLink."""
    from dblocks.server.ops.provision import operator_registry

    reg = operator_registry(ServerHome(home))
    if reg is None:
        fail("listing nodes needs the registry: run `dbserver init` and `dbserver start` first")
    t = Table("node", "name", "decision", "SuperLink node id", "SuperLink state", "problem")
    for n in reg.list_nodes():
        link = (n.get("info") or {}).get("superlink") or {}
        t.add_row(
            n["id"],
            n["display_name"],
            n["status"],
            str(link.get("node_id") or "-"),
            link.get("status", "-"),
            link.get("error") or "",
        )
    console.print(t)


@nodes_app.command("sync")
def nodes_sync(
    every: float = typer.Option(0.0, help="repeat every this many seconds until stopped (0: once)"),
    home: Path = typer.Option(default_home()),
) -> None:
    """Carry the registry's approvals and revocations to the SuperLink (what `dbserver start` does in a loop;
    run it as its own process where the SuperLink and the registry run as separate containers)."""
    from dblocks.server.ops.nodesync import NodeSyncLoop, SuperLinkNodes, sync_once
    from dblocks.server.ops.provision import load_config, read_secret, service_token_path
    from dblocks.shared.registry_client import RegistryClient

    sh = ServerHome(home)
    cfg = load_config(sh)
    if cfg is None:
        fail(f"no server.toml under {home}: run `dbserver init` first")
    registry = RegistryClient(cfg.registry_url, read_secret(service_token_path(sh)))
    link = SuperLinkNodes(cfg.superlink.local_address, sh.tls.ca)
    if every <= 0:
        from dblocks.server.ops.provision import directory_publisher, ensure_directory_key

        ensure_directory_key(sh)
        import httpx

        try:
            r = sync_once(registry, link, directory_publisher(sh))
        except httpx.TransportError as e:  # the registry's own errors end in one line in SafeTyper
            where = cfg.superlink.local_address
            fail(f"no answer from the SuperLink at {where} ({type(e).__name__}); is it running (`dbserver start`)?")
        console.print(f"registered {r.registered or 'none'}, unregistered {r.unregistered or 'none'}")
        for node_id, err in r.errors.items():
            console.print(f"[red]{node_id}: {err}[/red]")
        raise typer.Exit(1 if r.errors else 0)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from dblocks.server.ops.provision import directory_publisher, ensure_directory_key

    ensure_directory_key(sh)
    loop = NodeSyncLoop(registry, link, every, directory_publisher(sh))
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    loop.start()
    try:
        while loop.is_alive():
            loop.join(1.0)
    except KeyboardInterrupt:
        loop.stop()


def _sync_now(home: Path, reg) -> None:
    """One node-sync pass right away, if the SuperLink is up (else `dbserver start`'s loop does it)."""
    from dblocks.server.ops.nodesync import SuperLinkNodes, sync_once
    from dblocks.server.ops.provision import load_config, read_secret, service_token_path

    cfg = load_config(ServerHome(home))
    try:
        from dblocks.shared.registry_client import RegistryClient

        if cfg is None:
            raise FileNotFoundError(f"no server.toml under {home}")
        svc = RegistryClient(cfg.registry_url, read_secret(service_token_path(ServerHome(home))), connect_retries=1)
        link = SuperLinkNodes(cfg.superlink.local_address, ServerHome(home).tls.ca)
        from dblocks.server.ops.provision import directory_publisher

        report = sync_once(svc, link, directory_publisher(ServerHome(home)))
    except Exception as e:  # noqa: BLE001 - the loop in `dbserver start` retries
        console.print(
            f"[yellow]the SuperLink will be updated by `dbserver start`'s node sync ({type(e).__name__})[/yellow]"
        )
        return
    for node_id, err in report.errors.items():
        console.print(f"[red]{node_id}: {err}[/red]")
