"""`dbclient`: the company side — join a federation, check data, node keys and the privacy ledger."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dblocks.shared.clierrors import TRACEBACK_SETTINGS, SafeTyper
from dblocks.shared.data import DataError, load_dataset
from dblocks.shared.schema import parse_class_list

from .join import (
    WORKER_MODES,
    JoinOptions,
    budget_refusal,
    default_home,
    ledger_path,
    run_supernode,
    secagg_key_path,
    validate,
)

app = SafeTyper(
    help="Company side: join a federation, check data, keys and the privacy ledger. Add --debug anywhere "
    "to see a traceback.",
    no_args_is_help=True,
)
keys_app = typer.Typer(
    help="This company's node key (its identity towards the federation).", no_args_is_help=True, **TRACEBACK_SETTINGS
)
app.add_typer(keys_app, name="keys")
console = Console(soft_wrap=True)


def fail(msg: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def parse_size_mb(text: str) -> float:
    """'2GB', '512MB', '1.5G' -> megabytes."""
    t = text.strip().upper().removesuffix("B")
    for unit, mult in (("G", 1024.0), ("M", 1.0), ("K", 1 / 1024)):
        if t.endswith(unit):
            return float(t[:-1]) * mult
    return float(t)


@app.command()
def join(
    server: str = typer.Option(..., help="SuperLink address HOST:PORT (the operator's Fleet API)"),
    data: Path = typer.Option(..., help="your private data: CSV/Parquet (label column), NPZ (x, y) or image folder"),
    ca: Path | None = typer.Option(None, help="the operator's CA certificate (ca.pem)"),
    key: Path | None = typer.Option(None, help="this node's private key (dbclient keys init)"),
    epsilon_budget: float = typer.Option(8.0, help="record-level epsilon this data set may spend, all runs and blocks"),
    delta: float = typer.Option(1e-5, help="delta at which the budget is accounted"),
    memory_limit: str = typer.Option("0", help="memory training may use, e.g. 2GB (0: no limit)"),
    label_column: str = typer.Option("label", help="label column of a CSV/Parquet file"),
    classes: str | None = typer.Option(
        None,
        help="the run's class list from the operator, comma-separated: every label must be one of these names "
        "(numbers match by value) before joining, and a task with another class list is refused",
    ),
    image_size: int = typer.Option(0, help="resize images to this size (0: as they are)"),
    threads: int = typer.Option(0, help="CPU threads for training (0: all cores)"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS (local tests only)"),
    trusted_entities: Path | None = typer.Option(
        None,
        help="YAML file {id: 'ssh-ed25519 ...'} of app signers (Flower's --trusted-entities) whose signed apps "
        "may run too; without it only the installed dblocks ClientApp ever runs",
    ),
    directory_key: Path | None = typer.Option(
        None,
        help="the operator's SecAgg directory key (directory.pub, given with ca.pem): your peers' keys are "
        "checked against the directory it signs",
    ),
    require_consistency: bool = typer.Option(
        False,
        "--require-consistency",
        help="refuse every run whose secure aggregation lacks the consistency check "
        "(a server could otherwise show members different survivor sets)",
    ),
    home: Path = typer.Option(default_home(), help="where the ledger and Flower state live"),
    worker: str = typer.Option(
        "runtime",
        help="the resident company worker (torch, Opacus, the data loaded once): 'runtime' (it runs Flower's "
        "ClientApp tasks itself), 'forward' (Flower starts a ClientApp process per message that forwards it to the "
        "worker over a private Unix socket) or 'off' (each message in a fresh process, as Flower does by itself; "
        "slower, for comparison)",
    ),
) -> None:
    """Join a federation: validate the data, then run a SuperNode (outbound connections only).

    Only code installed here runs: the server's app must name the installed dblocks ClientApp and carry no
    code of its own, else it is refused (see the company guide)."""
    if worker not in WORKER_MODES:
        fail(f"--worker {worker!r}: choose one of {', '.join(WORKER_MODES)}")
    try:
        class_list = tuple(parse_class_list(classes)) if classes is not None else None
    except ValueError as e:
        fail(f"--classes: {e}")
    opts = JoinOptions(
        classes=class_list,
        server=server,
        data=data,
        home=home,
        ca=ca,
        key=key,
        insecure=insecure,
        epsilon_budget=epsilon_budget,
        delta=delta,
        memory_mb=parse_size_mb(memory_limit),
        label_column=label_column,
        image_size=image_size,
        threads=threads,
        trusted_entities=trusted_entities,
        directory_key=directory_key,
        require_consistency=require_consistency,
        worker=worker,
    )
    try:
        ds = validate(opts)
    except DataError as e:
        fail(f"{e}\nnothing was sent to the server.")
    if ca is not None and not ca.exists():
        fail(f"{ca}: CA certificate not found (ask the operator for ca.pem)")
    if key is not None and not key.exists():
        fail(f"{key}: node key not found (create one with `dbclient keys init`)")
    if trusted_entities is not None and not trusted_entities.is_file():
        fail(f"{trusted_entities}: trusted entities file not found")
    if directory_key is not None and not directory_key.is_file():
        fail(f"{directory_key}: directory key not found (ask the operator for directory.pub)")
    refusal = budget_refusal(opts)
    if refusal:
        fail(refusal)
    if insecure:
        console.print(
            "[bold yellow]warning:[/bold yellow] --insecure: no TLS, the connection is neither encrypted nor "
            "authenticated. Use only for local tests."
        )
    console.print(f"data ok: {ds.describe()}")
    from dblocks.privacy.secagg.flower import identity_public

    try:
        ident = identity_public(secagg_key_path(opts))
    except ValueError as e:
        fail(str(e))
    console.print(
        f"SecAgg identity {ident.hex()} ({secagg_key_path(opts)}): the operator enrols it when approving "
        f"this node{'; consistency check required' if require_consistency else ''}"
    )
    console.print(
        f"joining {server}; privacy ledger {ledger_path(home, data.resolve())} (budget epsilon={epsilon_budget} "
        f"at delta={delta})"
    )
    try:
        run_supernode(opts, emit=lambda line: console.print(f"[bold cyan]dbclient[/bold cyan] {line}"))
    except ValueError as e:
        fail(str(e))


@app.command("check-data")
def check_data(
    path: Path = typer.Argument(..., help="CSV/Parquet/NPZ file or image folder"),
    label_column: str = typer.Option("label", help="label column of a CSV/Parquet file"),
    image_size: int = typer.Option(0, help="resize images to this size (0: as they are)"),
    classes: str | None = typer.Option(
        None,
        help="the run's class list from the operator, comma-separated: every "
        "label must be one of these names (numbers match by value)",
    ),
) -> None:
    """Validate a data set as `join` would, and describe it (with --classes: check its labels against the run's)."""
    try:
        if classes is not None:  # the labels are checked against the list first: refused before any tensor is made
            try:
                names = parse_class_list(classes)
            except ValueError as e:
                fail(f"--classes: {e}")
            ds = load_dataset(path, label_column=label_column, image_size=image_size or None, classes=names)
        else:
            ds = validate(
                JoinOptions(server="", data=path, home=default_home(), label_column=label_column, image_size=image_size)
            )
    except DataError as e:
        fail(str(e))
    for n in ds.notes:
        console.print(f"[yellow]note:[/yellow] {escape(n)}", highlight=False)
    console.print_json(json.dumps({**ds.describe(), "class_names": ds.class_names}))


@app.command()
def status(
    data: Path = typer.Option(..., help="the data set whose ledger to show"),
    home: Path = typer.Option(default_home()),
    budget: float | None = typer.Option(None, help="override the budget shown (default: the ledger's)"),
) -> None:
    """The privacy ledger of a data set and the rounds it took part in."""
    from .ledger import PrivacyLedger

    path = ledger_path(home, data.resolve())
    if not path.exists():
        fail(f"no ledger for {data} under {home}: this data set has not trained anything yet", code=1)
    raw = json.loads(path.read_text())
    ledger = PrivacyLedger(path, budget if budget is not None else raw["budget"], raw["delta"], raw["accountant"])
    s = ledger.summary()
    console.print(
        f"record-level epsilon spent: [bold]{s['spent']:.3f}[/bold] of {s['budget']} at delta={s['delta']:g} "
        f"({s['accountant']} accountant), {s['updates']} updates"
    )
    t = Table("run", "round", "block", "noise z", "sample rate q", "steps", "examples", "epsilon after")
    for e in ledger.entries:
        t.add_row(
            e.run_id[:12],
            str(e.round),
            str(e.block_index),
            f"{e.noise_multiplier:g}",
            f"{e.sample_rate:.4g}",
            str(e.steps),
            str(e.examples),
            f"{e.epsilon_after:.3f}",
        )
    console.print(t)


@keys_app.command("init")
def keys_init(path: Path = typer.Option(default_home() / "node.key", help="where to write the private key")) -> None:
    """Create this company's node key and print the public key to send to the operator."""
    from dblocks.client.nodekey import create_node_key, public_key_fingerprint

    try:
        priv, pub = create_node_key(path)
    except FileExistsError as e:
        fail(str(e))
    text = pub.read_text().strip()
    console.print(f"private key: {priv} (keep it here; it never leaves this machine)")
    console.print(f"public key:  {pub}\n{text}")
    console.print(f"fingerprint: {public_key_fingerprint(text)}")
    from dblocks.privacy.secagg.flower import identity_public

    secagg = path.parent / "secagg.key"
    console.print(f"SecAgg identity: {identity_public(secagg).hex()} (key {secagg}, 0600)")
    console.print(
        "send the public key and the SecAgg identity to the operator, who approves them with "
        "`dbserver nodes approve KEY.pub --secagg-identity HEX`."
    )


if __name__ == "__main__":
    app()
