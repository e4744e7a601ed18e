"""The documentation builds with mkdocs in strict mode (every warning, e.g. a broken link, is an error)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_docs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    r = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for page in ("index", "architecture", "company-guide", "operator-guide", "privacy-researcher-guide", "benchmarks"):
        html = tmp_path / "site" / (page if page != "index" else "") / "index.html"
        assert html.exists(), page
    assert (tmp_path / "site" / "img" / "architecture.svg").exists()
