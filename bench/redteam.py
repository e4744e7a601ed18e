"""Red-team tests of the trust fixes (issue #14): run tests/security/ and record how many there are and how
many fail, on this checkout and, with --against REV, on an earlier revision (each test must fail there).

    python bench/redteam.py                      # this checkout: security.redteam_tests / _failures
    python bench/redteam.py --against 121adaa    # also: how many of the same tests fail on that revision

How the earlier revision is run: `git archive REV` is unpacked into a temporary folder and its four code
folders are put first on PYTHONPATH as the `dblocks.*` namespace, with a sitecustomize that removes the editable
install's finder, so the *tests of this checkout* import the *code of REV* and nothing else of ours. A test that
fails there because an API it needs did not exist yet counts as failing, and is listed as such in the JSON
(error type), so a reader can tell "the flaw was there" from "the entry point was not".

Writes bench/results/redteam.json (every test's outcome on both sides) and the summary keys
security.redteam_tests, security.redteam_failures (this checkout) and, with --against,
security.redteam_fail_on_base (how many of them fail on REV).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, update_summary, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = "tests/security"


def run_pytest(pythonpath: str | None, workers: int) -> dict[str, str]:
    """{test id: "passed" | "failed: <type>" | "skipped"} from one pytest run of tests/security."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", TESTS]
        if workers > 1:
            cmd += ["-n", str(workers)]
        subprocess.run(cmd, cwd=ROOT, env=env, check=False)
        outcomes = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                outcomes[name] = f"failed: {(bad.get('message') or '').splitlines()[0][:160]}"
            elif case.find("skipped") is not None:
                outcomes[name] = "skipped"
            else:
                outcomes[name] = "passed"
        return outcomes


# Put first on the path with the base revision: drops the editable install's finder (added by a .pth file before
# sitecustomize runs), which would otherwise serve a module that exists only in this checkout (say a moved one)
# from this checkout's code and make a base run pass where it should fail.
_NO_EDITABLE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
"""


def base_pythonpath(rev: str, into: Path) -> str:
    """Unpack `rev` into `into` and lay out its code folders as the dblocks namespace; returns the path."""
    src = into / "src"
    src.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    ns = into / "pkg" / "dblocks"
    ns.mkdir(parents=True)
    for folder in ("shared", "server", "client", "privacy"):
        (ns / folder).symlink_to(src / folder)
    (into / "pkg" / "sitecustomize.py").write_text(_NO_EDITABLE)
    return str(into / "pkg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", metavar="REV", help="also run the same tests against this git revision")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()
    print(f"red team: {TESTS} on {ROOT} ({args.workers} workers)", flush=True)
    here = run_pytest(None, args.workers)
    failures = sorted(t for t, o in here.items() if o.startswith("failed"))
    result: dict = {"tests": len(here), "failures": len(failures), "failed": failures, "outcomes": here}
    updates = {"security.redteam_tests": len(here), "security.redteam_failures": len(failures)}
    if args.against:
        with tempfile.TemporaryDirectory() as tmp:
            base = run_pytest(base_pythonpath(args.against, Path(tmp)), args.workers)
        passing_on_base = sorted(t for t, o in base.items() if o == "passed")
        result["base"] = {"rev": args.against, "outcomes": base, "passed_on_base": passing_on_base}
        updates["security.redteam_fail_on_base"] = sum(o.startswith("failed") for o in base.values())
        print(
            f"on {args.against}: {updates['security.redteam_fail_on_base']} of {len(base)} fail; "
            f"passing there (should be none): {passing_on_base}"
        )
    result["seconds"] = round(time.time() - t0, 1)
    write_json(RESULTS / "redteam.json", result)
    update_summary(RESULTS, updates)
    print(f"{len(here)} tests, {len(failures)} failing on this checkout; {result['seconds']} s")
    for t in failures:
        print("  FAILED", t, here[t])


if __name__ == "__main__":
    main()
