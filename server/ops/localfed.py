"""A complete federation on one machine, every part a real process: the registry (uvicorn), a Flower
SuperLink with TLS and node authentication, one `dbclient join` SuperNode per company, and `dbserver run new`.

Used by `dbserver demo` (the main job) and by the end-to-end and fault tests. Company data are slices of
MNIST 5k's fixed training split (1000 images are public and may be used to pretrain the blocks; the rest is
spread over the companies, Dirichlet non-IID by label); the test split evaluates the assembled model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dblocks.shared.data import Dataset, partition_dirichlet, save_npz
from dblocks.shared.presets import get_preset
from dblocks.shared.procs import free_port

from .procs import spawn, stop_group, wait_for_port

BIN = Path(sys.executable).parent


def split_public_private(task: str, public: int, seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
    """(public, private, test): the preset's fixed split, `public` training records drawn at random (seed)."""
    train, test = get_preset(task).load_split()
    perm = np.random.default_rng(seed).permutation(len(train))
    return train.subset(np.sort(perm[:public]), "public"), train.subset(np.sort(perm[public:]), "private"), test


@dataclass
class LocalFederation:
    root: Path
    task: str = "mnist-fed"
    insecure: bool = False
    with_registry: bool = True
    threads_per_company: int = 1
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    registry_url: str | None = None
    admin_token: str | None = None
    service_token: str | None = None
    superlink_port: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, DBLOCKS_HOME=str(self.root / "operator"))

    # ---- data -------------------------------------------------------------------------------------
    def company_data(
        self, num_companies: int, public: int = 1000, alpha: float = 0.5, seed: int = 0
    ) -> tuple[Dataset, list[Path], Dataset]:
        pub, private, test = split_public_private(self.task, public, seed)
        parts = partition_dirichlet(private.y.numpy(), num_companies, alpha, seed=seed, min_size=50)
        paths = []
        for i, idx in enumerate(parts):
            p = self.root / "companies" / f"company{i}" / "data.npz"
            p.parent.mkdir(parents=True, exist_ok=True)
            save_npz(private.subset(idx), p)
            paths.append(p)
        return pub, paths, test

    # ---- operator side ----------------------------------------------------------------------------
    def _cli(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run(
            [str(BIN / args[0]), *args[1:]], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
        return r.stdout

    def start_registry(self) -> str:
        port = free_port()
        home = str(self.root / "operator" / "server")  # the server home; the registry's data is beside it
        self.service_token = (
            self._cli("dbserver", "tokens", "create", "--role", "service", "--name", "federation", "--home", home)
            .strip()
            .splitlines()[-1]
        )
        self.admin_token = (
            self._cli("dbserver", "tokens", "create", "--role", "admin", "--name", "operator", "--home", home)
            .strip()
            .splitlines()[-1]
        )
        self.procs["registry"] = spawn(
            [str(BIN / "dbserver"), "registry", "--port", str(port), "--home", home],
            env=self.env,
            log=self.root / "registry.log",
        )
        wait_for_port("127.0.0.1", port, 60, self.procs["registry"])
        self.registry_url = f"http://127.0.0.1:{port}"
        return self.registry_url

    def start_superlink(self, port: int | None = None) -> int:
        """Start (or, with the old port, restart) the SuperLink; its state database survives restarts."""
        self.superlink_port = port or free_port()
        args = [str(BIN / "dbserver"), "start", "--port", str(self.superlink_port)] + (
            ["--insecure"] if self.insecure else []
        )
        self.procs["superlink"] = spawn(args, env=self.env, log=self.root / "dbserver-start.log")
        wait_for_port("127.0.0.1", self.superlink_port, 90, self.procs["superlink"])
        time.sleep(1.0)
        return self.superlink_port

    @property
    def ca(self) -> Path:
        return self.root / "operator" / "server" / "tls" / "ca.pem"

    @property
    def directory_key(self) -> Path:
        """directory.pub: the key that signs the SecAgg directory; every company pins it with ca.pem."""
        return self.ca.parent / "directory.pub"

    # ---- companies --------------------------------------------------------------------------------
    def company_home(self, name: str) -> Path:
        return self.root / "companies" / name

    def add_company(
        self,
        name: str,
        data: Path,
        *,
        budget: float = 8.0,
        approve: bool = True,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """Create the company's node key, have the operator approve it, and start `dbclient join`."""
        self.enrol_company(name, approve=approve, env=env)
        return self.start_company(name, data, budget=budget, extra=extra, env=env)

    def add_companies(self, data: dict[str, Path], *, parallel: int = 3, **kw) -> list[subprocess.Popen]:
        """`add_company` for each {name: data file}: keys and approvals `parallel` at a time, then every start."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(lambda name: self.enrol_company(name, env=kw.get("env")), data))
        # started from this thread: a child tied to its parent (spawn) dies with the thread that started it
        return [self.start_company(name, path, **kw) for name, path in data.items()]

    def enrol_company(self, name: str, *, approve: bool = True, env: dict[str, str] | None = None) -> None:
        """The company creates its node key; the operator approves it (and enrols its SecAgg identity)."""
        home = self.company_home(name)
        home.mkdir(parents=True, exist_ok=True)
        key = home / "node.key"
        if not self.insecure and not key.exists():
            subprocess.run(
                [str(BIN / "dbclient"), "keys", "init", "--path", str(key)],
                env=dict(os.environ, DBLOCKS_HOME=str(home), **(env or {})),
                check=True,
                capture_output=True,
                timeout=60,
            )
            if approve:
                self.approve(name)

    def start_company(
        self,
        name: str,
        data: Path,
        *,
        budget: float = 8.0,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """Start the company's `dbclient join` (its node key made by `enrol_company`)."""
        home = self.company_home(name)
        key = home / "node.key"
        env = dict(os.environ, DBLOCKS_HOME=str(home), **(env or {}))
        args = [
            str(BIN / "dbclient"),
            "join",
            "--server",
            f"127.0.0.1:{self.superlink_port}",
            "--data",
            str(data),
            "--epsilon-budget",
            str(budget),
            "--threads",
            str(self.threads_per_company),
            "--home",
            str(home),
        ]
        args += (
            ["--insecure"]
            if self.insecure
            else ["--ca", str(self.ca), "--key", str(key), "--directory-key", str(self.directory_key)]
        )
        self.procs[name] = spawn(args + list(extra or []), env=env, log=home / "join.log")
        return self.procs[name]

    def approve(self, name: str) -> None:
        """The operator approves the company's node key and enrols its SecAgg identity (what it sent with it)."""
        from dblocks.privacy.secagg.flower import identity_public

        key = self.company_home(name) / "node.key"
        identity = identity_public(key.parent / "secagg.key").hex()
        self._cli("dbserver", "nodes", "approve", str(key) + ".pub", "--name", name, "--secagg-identity", identity)

    # ---- runs -------------------------------------------------------------------------------------
    def run(self, *, wait: bool = True, run_id: str | None = None, **settings) -> subprocess.Popen:
        """`dbserver run new` with `settings` as its options (underscores become dashes)."""
        args = [str(BIN / "dbserver"), "run", "new"]
        for k, v in settings.items():
            if isinstance(v, bool):
                args.append(f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}")
            elif v is not None:
                args += [f"--{k.replace('_', '-')}", str(v)]
        env = self.env
        if self.registry_url:  # the token by environment: a command line is visible to every user of the host
            if self.service_token is None:  # `start_registry` sets both
                raise RuntimeError("a registry URL without its service token: start the registry with start_registry")
            args += ["--registry-url", self.registry_url]
            env = dict(self.env, DBLOCKS_REGISTRY_TOKEN=self.service_token)
        if run_id:
            args += ["--run-id", run_id]
        proc = spawn(args + ["--wait"], env=env, log=self.root / "run-new.log")
        if wait:
            proc.wait()
        return proc

    def run_dir(self, run_id: str) -> Path:
        return self.root / "operator" / "server" / "runs" / run_id

    def runs(self) -> list[str]:
        d = self.root / "operator" / "server" / "runs"
        return sorted((p.name for p in d.iterdir()), key=lambda n: (len(n), n)) if d.exists() else []

    def status(self, run_id: str) -> dict:
        p = self.run_dir(run_id) / "status.json"
        return json.loads(p.read_text()) if p.exists() else {"status": "unknown"}

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM) -> None:
        """Stop one process (with everything it started, e.g. a SuperNode's superexec) or all of them."""
        for n in [name] if name else list(reversed(self.procs)):
            p = self.procs.pop(n, None)
            if p:
                stop_group(p, sig)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
