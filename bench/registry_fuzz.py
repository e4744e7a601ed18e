"""Fuzz the registry (#19): the test suite's generator (tests/registry/regfuzz.py) with more examples, in-process
(FastAPI's TestClient) on a fresh SQLite registry. Counts the requests sent and the answers of 500 or more, which
must be none.

    python bench/registry_fuzz.py                        # registry.fuzz_requests, registry.fuzz_5xx
    python bench/registry_fuzz.py --postgres             # the same on SQLite and on PostgreSQL (both counted)
    python bench/registry_fuzz.py --against 66f3ce6~1    # also: the 5xx the same requests get on that revision

Requests: Schemathesis from the OpenAPI schema (`--schema-examples` per operation and mode, valid and invalid),
then `--hostile-examples` hostile requests per route (API and dashboard: ids of +-2**70, text ids, lone
surrogates, NaN, wrong types, deep nesting, broken Authorization headers). Both are seeded (derandomized), so a
run sends the same requests each time. With --against, `git archive REV` is run the same way as bench/redteam.py
does (its code folders first on PYTHONPATH, the editable install's finder removed), with this checkout's
generator.

Writes bench/results/registry_fuzz.json (statuses, first findings, seconds) and the summary keys
registry.fuzz_requests, registry.fuzz_5xx (over every database fuzzed), and registry.fuzz_5xx_on_base (SQLite)
with --against.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, update_summary, write_json  # noqa: E402
from redteam import base_pythonpath  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNNER = """
import json, sys, tempfile, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
sys.path.insert(0, {tests!r})
import regfuzz
from dblocks.server.registry.config import RegistrySettings
with tempfile.TemporaryDirectory() as d:
    if {postgres!r}:
        from throwaway_pg import ThrowawayPostgres
        with ThrowawayPostgres() as pg:
            settings = RegistrySettings.in_directory(d, database_url=pg.create_database("fuzz"))
            report = regfuzz.fuzz(Path(d), {schema}, {hostile}, settings)
    else:
        report = regfuzz.fuzz(Path(d), {schema}, {hostile})
print("FUZZ-REPORT " + json.dumps(report.summary()))
"""


def fuzz_once(schema_examples: int, hostile_examples: int, pythonpath: str | None = None, postgres=False) -> dict:
    """One fuzzing pass in a fresh interpreter (so that --against can load another revision's code), on SQLite or
    on a throwaway PostgreSQL cluster (tests/registry/throwaway_pg.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    code = RUNNER.format(
        tests=str(ROOT / "tests" / "registry"), schema=schema_examples, hostile=hostile_examples, postgres=postgres
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("FUZZ-REPORT ")]
    if not lines:
        raise SystemExit(f"the fuzzing pass did not finish (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
    return json.loads(lines[-1].removeprefix("FUZZ-REPORT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schema-examples", type=int, default=5, help="Schemathesis examples per operation and mode")
    ap.add_argument("--hostile-examples", type=int, default=20, help="hostile requests per route")
    ap.add_argument("--against", metavar="REV", help="also send the same requests to this git revision (SQLite)")
    ap.add_argument("--postgres", action="store_true", help="also fuzz a registry on PostgreSQL (Debian's package)")
    args = ap.parse_args()
    print(
        f"registry fuzz: in-process (TestClient, SQLite), Schemathesis {args.schema_examples} examples per "
        f"operation and mode + {args.hostile_examples} hostile requests per route",
        flush=True,
    )
    t0 = time.time()
    here = fuzz_once(args.schema_examples, args.hostile_examples)
    here["seconds"] = round(time.time() - t0, 1)
    result: dict = {"setup": vars(args), "this_checkout": here}
    print(f"SQLite: {here['requests']} requests, {here['server_errors']} answers >= 500; {here['statuses']}")
    requests, server_errors, findings = here["requests"], here["server_errors"], list(here["first_server_errors"])
    if args.postgres:
        t1 = time.time()
        pg = fuzz_once(args.schema_examples, args.hostile_examples, postgres=True)
        pg["seconds"] = round(time.time() - t1, 1)
        result["postgresql"] = pg
        requests, server_errors = requests + pg["requests"], server_errors + pg["server_errors"]
        findings += pg["first_server_errors"]
        print(f"PostgreSQL: {pg['requests']} requests, {pg['server_errors']} answers >= 500; {pg['statuses']}")
    updates = {"registry.fuzz_requests": requests, "registry.fuzz_5xx": server_errors}
    if args.against:
        with tempfile.TemporaryDirectory() as tmp:
            base = fuzz_once(args.schema_examples, args.hostile_examples, base_pythonpath(args.against, Path(tmp)))
        base["rev"] = args.against
        result["base"] = base
        updates["registry.fuzz_5xx_on_base"] = base["server_errors"]
        print(f"on {args.against}: {base['requests']} requests, {base['server_errors']} answers >= 500")
        for method, url, status, text in base["first_server_errors"]:
            print(f"  {status} {method} {url[:100]} {text[:80]!r}")
    result["seconds"] = round(time.time() - t0, 1)
    write_json(RESULTS / "registry_fuzz.json", result)
    update_summary(RESULTS, updates)
    for method, url, status, text in findings:
        print(f"  FINDING {status} {method} {url[:100]} {text[:200]!r}")
    sys.exit(1 if server_errors else 0)


if __name__ == "__main__":
    main()
