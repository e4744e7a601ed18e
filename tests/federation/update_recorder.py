"""Test-only: keep a copy of every clipped delta a company computes, so that an end-to-end test can check the
secure aggregate against the plain mean of the cohort's deltas.

This lives in tests/, never in the product: it wraps `dblocks.client.trainer.train_task` (the ClientApp looks it
up at call time). In-process tests monkeypatch it with `recording(train_task, directory)`; for real processes,
`process_env(directory)` gives the environment under which every Python process (`dbclient join` and the
ClientApp processes Flower starts) loads `recorder_site/sitecustomize.py`, which installs the same wrapper when
the trainer module is imported.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import os
import sys
from pathlib import Path

ENV = "DBLOCKS_TEST_UPDATE_RECORDER_DIR"
SITE = Path(__file__).resolve().parent / "recorder_site"


def recording(train_task, directory: str | os.PathLike):
    """`train_task` that also saves each clipped delta as directory/r{round}-b{block}-a{attempt}-{pid}-{tag}.npz."""
    directory = Path(directory)

    def recording_train_task(task, *args, **kwargs):
        import numpy as np

        update = train_task(task, *args, **kwargs)
        directory.mkdir(parents=True, exist_ok=True)
        tag = hashlib.sha256(update.delta[0].tobytes()).hexdigest()[:8]
        name = f"r{task.round}-b{task.block_index}-a{task.attempt}-{os.getpid()}-{tag}.npz"
        np.savez(directory / name, *update.delta)
        return update

    return recording_train_task


def process_env(directory: str | os.PathLike) -> dict[str, str]:
    """Environment for a process (and its children) whose `train_task` should record under `directory`."""
    path = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
    return {ENV: str(directory), "PYTHONPATH": path}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Wraps train_task right after `dblocks.client.trainer` is executed (imported by the ClientApp on use)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def find_spec(self, name, path=None, target=None):
        if name != "dblocks.client.trainer":
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        execute, directory = spec.loader.exec_module, self.directory

        def exec_module(module):
            execute(module)
            module.train_task = recording(module.train_task, directory)

        spec.loader.exec_module = exec_module
        return spec


def install_from_env() -> None:
    """Called by recorder_site/sitecustomize.py at interpreter start when ENV is set."""
    directory = os.environ.get(ENV)
    if directory:
        sys.meta_path.insert(0, _AfterImport(Path(directory)))
