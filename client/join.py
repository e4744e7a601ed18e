"""`dbclient join`: validate the local data, then run a Flower SuperNode in this process.

The SuperNode only ever opens outbound connections to the SuperLink; the ClientApp it runs
(dblocks.client.clientapp) reads the data and the privacy ledger named in the node configuration.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from dblocks.shared.data import Dataset, load_dataset
from dblocks.shared.procs import flwr_env, free_port


def default_home() -> Path:
    return Path(os.environ.get("DBLOCKS_HOME", Path.home() / ".dblocks")) / "client"


def ledger_path(home: Path, data: Path) -> Path:
    """One ledger per data set: the same records always compose into the same budget."""
    return home / "ledgers" / f"{hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:16]}.json"


@dataclass(frozen=True)
class JoinOptions:
    server: str
    data: Path
    home: Path
    ca: Path | None = None
    key: Path | None = None
    insecure: bool = False
    epsilon_budget: float = 8.0
    delta: float = 1e-5
    memory_mb: float = 0.0
    label_column: str = "label"
    image_size: int = 0
    threads: int = 0  # torch threads for training (0: torch's default, all cores)
    runtime_port: int = 0
    trusted_entities: Path | None = None  # YAML {id: "ssh-ed25519 ..."}: signers whose apps may also run


def validate(opts: JoinOptions) -> Dataset:
    """Load the data exactly as the ClientApp will; a DataError here means nothing was sent."""
    return load_dataset(opts.data, label_column=opts.label_column, image_size=opts.image_size or None)


def supernode_argv(opts: JoinOptions) -> list[str]:
    data = opts.data.resolve()
    node_config = " ".join([
        f'data-path="{data}"', f'ledger-path="{ledger_path(opts.home, data)}"',
        f'progress-path="{opts.home / "progress.log"}"',
        f"epsilon-budget={float(opts.epsilon_budget)}", f"delta={float(opts.delta)}", f"memory-mb={float(opts.memory_mb)}",
        f'label-column="{opts.label_column}"', f"image-size={int(opts.image_size)}", f"threads={int(opts.threads)}",
    ])
    argv = ["flower-supernode", "--superlink", opts.server, "--node-config", node_config,
            "--port", str(opts.runtime_port or free_port())]
    if opts.insecure:
        argv.append("--insecure")
    else:
        if opts.ca is None:
            raise ValueError("TLS needs the server's CA certificate: pass --ca ca.pem (or --insecure for a local test)")
        argv += ["--root-certificates", str(opts.ca)]
    if opts.key is not None:
        argv += ["--auth-supernode-private-key", str(opts.key)]
    if opts.trusted_entities is not None:
        argv += ["--trusted-entities", str(opts.trusted_entities)]
    return argv


def follow(path: Path, emit, stop: threading.Event) -> None:
    """Call emit(line) for every line appended to `path` (the ClientApp's progress log) until stopped."""
    path.touch()
    with open(path) as f:
        f.seek(0, os.SEEK_END)
        while not stop.is_set():
            line = f.readline()
            if line:
                emit(line.rstrip())
            else:
                stop.wait(0.5)


def run_supernode(opts: JoinOptions, emit=print) -> None:
    """Run the SuperNode in-process until it is stopped (blocks); progress lines go to emit().
    Only the installed dblocks ClientApp (or an app signed by one of `opts.trusted_entities`) runs: see appguard."""
    from flwr.supernode.cli import flower_supernode

    from .appguard import AppGuard

    opts.home.mkdir(parents=True, exist_ok=True)
    progress = opts.home / "progress.log"

    def refusal(text: str) -> None:
        with open(progress, "a") as f:
            f.write(f"REFUSED: {text}\n")

    AppGuard(on_refusal=refusal).install()
    os.environ.update(flwr_env(opts.home / "flwr"))
    sys.argv = supernode_argv(opts)
    stop = threading.Event()
    threading.Thread(target=follow, args=(opts.home / "progress.log", emit, stop), daemon=True).start()
    try:
        flower_supernode()
    finally:
        stop.set()
