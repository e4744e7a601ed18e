"""Fuzzing the registry in-process: every route, with requests generated from its OpenAPI schema (Schemathesis,
valid and invalid data) and with hostile requests of our own (ids of +-2**70, lone surrogates, NaN, wrong types,
broken Authorization headers) on every route, the dashboard pages that the schema leaves out included.

The test suite (tests/registry/test_registry_fuzz.py) runs a few examples per route; bench/registry_fuzz.py runs
the same generator with more. A finding is any answer of 500 or more: the registry must answer every malformed
request with a 4xx that says what is wrong.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from regseed import ssh_key
from regtools import DP, make_block, new_run
from starlette.routing import Route
from starlette.testclient import TestClient

from dblocks.server.registry.app import create_app
from dblocks.server.registry.auth import issue_token
from dblocks.server.registry.config import RegistrySettings
from dblocks.shared.registry_client import RegistryClient
from dblocks.shared.versions import VersionMeta

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
BIG = 2**70
PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


@dataclass
class FuzzReport:
    """What a fuzzing pass sent and got: requests, answers per status code, and every 5xx (method, url, body)."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[tuple[str, str, int, str]] = field(default_factory=list)

    def record(self, method: str, url: str, status: int, text: str) -> None:
        self.requests += 1
        self.statuses[status] += 1
        if status >= 500:
            self.server_errors.append((method, url, status, text[:300]))

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "server_errors": len(self.server_errors),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "first_server_errors": self.server_errors[:10],
        }


def fuzz_registry(directory: Path, settings: RegistrySettings | None = None):
    """A registry app on a fresh SQLite file in `directory` (or on `settings`' database), seeded with one run
    (2 blocks), an approved node, a registered version and a round report, so that generated ids also hit
    existing rows. Returns (app, admin token, {"run_id", "version_id", "node_id"})."""
    app = create_app(settings or RegistrySettings.in_directory(directory))
    with app.state.registry.db.writer() as s:
        token = issue_token(s, name="fuzz-admin", role="admin", created_by="fuzz")[1]
    client = RegistryClient("http://testserver", token, http=TestClient(app))
    run = new_run(client, num_blocks=2, num_rounds=3)
    node = client.register_node("fuzz-node", "Fuzz Ltd", ssh_key())
    client.approve_node(node["id"])
    spec, weights = make_block(0, num_blocks=2)
    version = client.register_block_version(
        run["id"], 0, spec, weights, VersionMeta(round=1, cohort=[node["id"]], **DP)
    )
    client.report_round(run["id"], 1, 0, [node["id"]], "completed")
    return app, token, {"run_id": run["id"], "version_id": version["id"], "node_id": node["id"]}


def schema_pass(
    client: TestClient,
    app,
    token: str,
    report: FuzzReport,
    examples: int,
    modes: tuple[str, ...] = ("positive", "negative"),
) -> None:
    """Schemathesis over the app's OpenAPI schema: `examples` requests per operation and generation mode (positive:
    valid by the schema; negative: invalid), each sent with the admin token (so they get past authentication to
    the validation and the handlers)."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    auth = {"Authorization": f"Bearer {token}"}
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode(m) for m in modes):

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def send(case):
                try:
                    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=auth)
                    response = client.request(**kwargs)
                except Exception as e:  # noqa: BLE001 - an exception raised through the app is a 500 finding
                    report.record(case.method, case.formatted_path, 500, f"raised {type(e).__name__}: {e}")
                    return
                report.record(case.method, case.formatted_path, response.status_code, response.text)

            try:
                send()
            except Unsatisfiable:  # nothing in this operation can be made invalid (no parameters, no body)
                pass


# ---- hostile requests of our own, on every route (dashboard included) -------------------------------------------
# Drawn with a seeded random.Random (no shrinking needed: a finding is reported with its request as sent).
HOSTILE_IDS = [
    BIG,
    -BIG,
    2**63,
    2**64,
    2**31,
    -1,
    0,
    "abc",
    "1.5",
    "NaN",
    "true",
    "%00",
    "\x00",
    "a\x00b",
    "\ud800",
    "1e400",
    " 1",
    "",
]
HOSTILE_SCALARS = [
    None,
    True,
    False,
    0,
    -1,
    BIG,
    -BIG,
    2**63,
    1.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    1e308,
    "",
    "x" * 300,
    "\ud800",
    "a\udfffb",
    "\x00",
    "<script>",
    "1",
    "true",
]
AUTH_HEADERS = [None, "", "Bearer", "Bearer ", "Bearer  ", "Basic abc", "Bearer dbk_nonsense", "bearer \t"]
QUERY_NAMES = ["run_id", "block_index", "round", "offset", "limit", "max_epsilon", "status", "after_id", "task", "next"]


def _value(rng: random.Random, depth: int = 0):
    """A hostile JSON value: a scalar from HOSTILE_SCALARS or a random one, or (shallow) a list or object of them."""
    roll = rng.random()
    if depth < 2 and roll < 0.15:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 2 and roll < 0.3:
        return {rng.choice(["a", "x", "\ud800", ""]): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if roll < 0.7:
        return rng.choice(HOSTILE_SCALARS)
    return rng.choice([rng.randint(-(2**80), 2**80), rng.uniform(-1e6, 1e6), _text(rng)])


def _text(rng: random.Random) -> str:
    return "".join(
        chr(rng.choice([rng.randint(32, 126), rng.randint(0, 0x2FFFF), 0xD800])) for _ in range(rng.randint(0, 8))
    )


def _body(rng: random.Random, fields: list[str]):
    """A JSON object over the route's own body fields with hostile values, sometimes a non-object or deep nesting."""
    roll = rng.random()
    if roll < 0.1:
        return _value(rng)
    if roll < 0.13:
        return "[" * 5000 + "]" * 5000  # as raw text: deeper than Python's recursion limit
    names = fields or ["x"]
    return {rng.choice(names): _value(rng) for _ in range(rng.randint(0, len(names) + 1))}


def routes(app) -> list[tuple[str, str]]:
    """(method, path template) of every route of the app: the API routers (under /api), the dashboard's and the
    app's own."""
    from dblocks.server.registry.api import ROUTERS
    from dblocks.server.registry.dashboard import router as dashboard

    mounted = [("/api", r.routes) for r in ROUTERS] + [("", dashboard.routes), ("", app.router.routes)]
    out = set()
    for prefix, rs in mounted:
        for r in rs:
            if isinstance(r, Route):
                out |= {(m, prefix + r.path) for m in r.methods or () if m not in ("HEAD", "OPTIONS")}
    return sorted(out)


def body_fields(app) -> dict[str, list[str]]:
    """Request body field names per path, from the OpenAPI schema (JSON and multipart bodies)."""
    spec = app.openapi()
    comps = spec.get("components", {}).get("schemas", {})
    out: dict[str, list[str]] = {}
    for path, ops in spec["paths"].items():
        for op in ops.values():
            for media in (op.get("requestBody") or {}).get("content", {}).values():
                ref = media.get("schema", {})
                ref = ref.get("$ref") or next((x.get("$ref") for x in ref.get("anyOf", []) if "$ref" in x), None)
                if ref:
                    out.setdefault(path, []).extend(comps.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}))
    return out


def hostile_pass(
    client: TestClient, app, token: str, known: dict, report: FuzzReport, examples: int, seed: int = 0
) -> None:
    """`examples` hostile requests per route: path parameters of every kind (huge, negative, text, surrogates),
    hostile query values and JSON bodies, sent with the admin token or a broken Authorization header."""
    rng = random.Random(seed)
    fields = body_fields(app)
    ids = [*HOSTILE_IDS, known["run_id"], known["version_id"], known["node_id"]]
    for method, template in routes(app):
        for _ in range(examples):
            path = PARAM.sub(lambda m: _segment(rng.choice(ids) if rng.random() < 0.8 else _text(rng)), template)
            query = {
                rng.choice(QUERY_NAMES): rng.choice([*ids, "nan", "inf", "-inf", "1e999"])
                for _ in range(rng.randint(0, 3))
            }
            auth = f"Bearer {token}" if rng.random() < 0.6 else rng.choice(AUTH_HEADERS)
            headers = {"accept": rng.choice(["text/html", "application/json"])}
            if auth is not None:
                headers["authorization"] = auth
            kw = {}
            if method == "POST":
                headers["content-type"] = "application/json"
                body = _body(rng, fields.get(template, []))
                text = body if isinstance(body, str) and body.startswith("[[") else json.dumps(body)
                kw["content"] = text.encode("utf-8", "surrogatepass")
            query_string = "&".join(f"{k}={_segment(v)}" for k, v in query.items())
            url = path + ("?" + query_string if query_string else "")
            try:
                response = client.request(method, url, headers=headers, follow_redirects=False, **kw)
            except Exception as e:  # noqa: BLE001 - an exception raised through the app is a 500 finding
                report.record(method, url, 500, f"raised {type(e).__name__}: {e}")
                continue
            report.record(method, url, response.status_code, response.text)


def _segment(value) -> str:
    """A value as one URL path segment or query value, percent-encoded (lone surrogates as their UTF-8-ish
    bytes, which is what a careless client sends)."""
    return quote(str(value).encode("utf-8", "surrogatepass"), safe="")


def fuzz(
    directory: Path, schema_examples: int, hostile_examples: int, settings: RegistrySettings | None = None
) -> FuzzReport:
    """Both passes on a fresh registry in `directory` (SQLite) or on `settings`' database."""
    app, token, known = fuzz_registry(directory, settings)
    report = FuzzReport()
    try:
        with TestClient(app, raise_server_exceptions=False) as client:  # one event loop thread for all requests
            schema_pass(client, app, token, report, schema_examples)
            hostile_pass(client, app, token, known, report, hostile_examples)
    finally:
        app.state.registry.db.dispose()
    return report
