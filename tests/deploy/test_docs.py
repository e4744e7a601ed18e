"""The documentation builds with mkdocs in strict mode (every warning, e.g. a broken link or a page missing from
the nav, is an error), and the benchmark tables in it are the ones bench/results renders to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GUIDES = ("index", "architecture", "company-guide", "operator-guide", "privacy-researcher-guide", "benchmarks")


def nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    return [p for item in nav for p in nav_pages(item)]


def test_docs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs, "mkdocs is missing from this environment: pip install -e '.[dev]' (the docs are built in CI)"
    r = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for page in GUIDES:
        html = tmp_path / "site" / (page if page != "index" else "") / "index.html"
        assert html.exists(), page
    assert (tmp_path / "site" / "img" / "architecture.svg").exists()


def test_every_page_is_in_the_nav_and_omissions_are_warnings():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config.get("strict") is True
    assert config["validation"]["omitted_files"] == "warn", "a page left out of the nav must fail the strict build"
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    missing = pages - set(nav_pages(config["nav"]))
    assert not missing, f"docs pages not in mkdocs.yml's nav: {sorted(missing)}"
    assert {f"{g}.md" for g in GUIDES} <= pages


def test_benchmark_tables_match_bench_results(tmp_path):
    """docs/benchmarks.md's generated sections are what bench/report_core.py and bench/report_benchmarks.py
    render from bench/results now (after a benchmark run, re-run both and commit the page)."""
    doc = tmp_path / "benchmarks.md"
    shutil.copyfile(ROOT / "docs" / "benchmarks.md", doc)
    for script in ("report_core.py", "report_benchmarks.py"):
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), "--doc", str(doc)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert doc.read_text() == (ROOT / "docs" / "benchmarks.md").read_text(), (
        "docs/benchmarks.md is out of date with bench/results: run .venv/bin/python bench/report_core.py && "
        ".venv/bin/python bench/report_benchmarks.py"
    )
