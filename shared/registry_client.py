"""Python client of the registry: the only way the federation server and the audit tool talk to it.

    from dblocks.shared.registry_client import RegistryClient
    reg = RegistryClient("http://127.0.0.1:8700", token)      # a 'service' token for the federation server
    run = reg.create_run(task="mnist", dataset={...}, num_blocks=4, schedule=sched.to_dict(), secagg={...},
                         dp={...}, num_rounds=20, created_by="alice")
    reg.set_status(run["id"], "running")
    state = reg.control_state(run["id"])                        # poll each round: status, num_rounds
    v = reg.register_block_version(run["id"], 2, spec.to_json(), weights, VersionMeta(round=3, ...))

Every method returns plain JSON-ready dicts (or lists of them, or bytes for file downloads). HTTP errors
raise a `RegistryError` subclass carrying the server's message: `NotFound` (404), `Conflict` (409),
`InvalidRequest` (422), `Unauthorized` (401), `Forbidden` (403), `TooLarge` (413). Downloads are checked
against their sha256 here too and raise `IntegrityError` on a mismatch.

Requests that failed to connect are retried (the registry may be restarting); requests that reached the
server are retried only when repeating them is harmless (reads, idempotent writes such as
`register_block_version`, `control`, `set_status`, `register_node`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

import httpx

from .versions import VersionMeta

PAGE = 500


class RegistryError(RuntimeError):
    """An error answer from the registry."""

    def __init__(self, status_code: int, detail: Any, method: str = "", url: str = ""):
        self.status_code, self.detail = status_code, detail
        super().__init__(f"{method} {url} -> {status_code}: {format_detail(detail)}")


class Unauthorized(RegistryError):
    pass  # noqa: E701


class Forbidden(RegistryError):
    pass  # noqa: E701


class NotFound(RegistryError):
    pass  # noqa: E701


class Conflict(RegistryError):
    pass  # noqa: E701


class TooLarge(RegistryError):
    pass  # noqa: E701


class InvalidRequest(RegistryError):
    pass  # noqa: E701


class RegistryUnreachable(RegistryError):
    """No answer from the registry at all (refused, timed out, cut): its message names the URL, never the token."""

    def __init__(self, base_url: str, cause: BaseException):
        self.status_code, self.detail, self.base_url = 0, type(cause).__name__, base_url
        RuntimeError.__init__(
            self,
            f"no answer from the registry at {base_url} ({type(cause).__name__}); is it running (`dbserver start`)?",
        )


class IntegrityError(RuntimeError):
    """Downloaded bytes whose sha256 is not the one the registry recorded."""


ERRORS = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: TooLarge, 422: InvalidRequest}


def format_detail(detail: Any) -> str:
    """FastAPI's validation list as 'field.path: message; ...', anything else as text."""
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    return str(detail)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RegistryClient:
    """HTTP client of the dblocks registry. `token` is an API token (`dbserver tokens create --role ...`)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 60.0,
        connect_retries: int = 5,
        http: httpx.Client | None = None,
    ):
        """`token` None sends no Authorization header (the registry answers 401 "missing API token").
        `http`: an httpx.Client to send through (e.g. Starlette's TestClient in tests); its base URL is kept."""
        self.base_url = base_url.rstrip("/")
        self.connect_retries = connect_retries
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        if token is not None:
            self._http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing -------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, idempotent: bool | None = None, **kw) -> httpx.Response:
        idempotent = method == "GET" if idempotent is None else idempotent
        delay = 0.2
        for attempt in range(self.connect_retries + 1):
            try:
                r = self._http.request(method, path, **kw)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if attempt == self.connect_retries:
                    raise RegistryUnreachable(self.base_url, e) from None  # from None: no header in a traceback
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteError) as e:
                if not idempotent or attempt == self.connect_retries:
                    raise RegistryUnreachable(self.base_url, e) from None
            except httpx.TransportError as e:  # anything else below HTTP (a bad URL scheme, a proxy, TLS)
                raise RegistryUnreachable(self.base_url, e) from None
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except (ValueError, AttributeError):
                detail = r.text
            raise ERRORS.get(r.status_code, RegistryError)(r.status_code, detail, method, path)
        return r

    def _json(self, method: str, path: str, **kw) -> Any:
        return self._request(method, path, **kw).json()

    def _all(self, path: str, params: dict, limit: int | None) -> list[dict]:
        """Every item of a paginated list (or the first `limit`)."""
        params = {k: v for k, v in params.items() if v is not None}
        items: list[dict] = []
        while limit is None or len(items) < limit:
            size = PAGE if limit is None else min(PAGE, limit - len(items))
            page = self._json("GET", path, params={**params, "limit": size, "offset": len(items)})
            items.extend(page["items"])
            if len(items) >= page["total"] or not page["items"]:
                break
        return items

    # ---- general ----------------------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._json("GET", "/health")

    def whoami(self) -> dict:
        """{"token_id", "name", "role"} of this client's token."""
        return self._json("GET", "/api/whoami")

    def events(
        self,
        *,
        run_id: int | None = None,
        kind: str | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Event log entries, oldest first (after `after_id` if given)."""
        return self._all("/api/events", {"run_id": run_id, "kind": kind, "after_id": after_id, "order": "asc"}, limit)

    def create_token(self, name: str, role: str) -> dict:
        """Admin: a new token; the secret is in ["token"] and is never shown again."""
        return self._json("POST", "/api/tokens", json={"name": name, "role": role})

    # ---- runs ---------------------------------------------------------------------------------------------------
    def create_run(
        self,
        task: str,
        dataset: dict,
        num_blocks: int,
        schedule: dict,
        secagg: dict,
        dp: dict,
        num_rounds: int,
        created_by: str | None = None,
        *,
        name: str | None = None,
    ) -> dict:
        """A new run in status 'created'. `schedule` is NoiseSchedule.to_dict() (its num_blocks must match).
        Returns the run with its blocks' owned/training sigma intervals."""
        body = {
            "task": task,
            "dataset": dataset,
            "num_blocks": num_blocks,
            "schedule": schedule,
            "secagg": secagg,
            "dp": dp,
            "num_rounds": num_rounds,
            "created_by": created_by,
            "name": name,
        }
        return self._json("POST", "/api/runs", json=body)

    def get_run(self, run_id: int) -> dict:
        return self._json("GET", f"/api/runs/{run_id}")

    def list_runs(self, *, status: str | None = None, task: str | None = None, limit: int | None = None) -> list[dict]:
        """Runs, newest first."""
        return self._all("/api/runs", {"status": status, "task": task}, limit)

    def control_state(self, run_id: int) -> dict:
        """{"run_id", "status", "num_rounds", "current_round", "status_reason", "updated_at"}: poll each round.
        status 'paused' -> wait and poll again; 'stopped' -> end the run; num_rounds may change."""
        return self._json("GET", f"/api/runs/{run_id}/control")

    def control(
        self, run_id: int, action: str | None = None, num_rounds: int | None = None, reason: str | None = None
    ) -> dict:
        """Operator: action in start|pause|resume|stop and/or a new num_rounds. Conflict if not allowed now."""
        return self._json(
            "POST",
            f"/api/runs/{run_id}/control",
            idempotent=True,
            json={"action": action, "num_rounds": num_rounds, "reason": reason},
        )

    def set_status(self, run_id: int, status: str, reason: str | None = None) -> dict:
        """Service: status in running|finished|failed (running from created/failed; finished from running/paused;
        failed from created/running/paused; the same status again is a no-op). The operator's decisions stand:
        running on a paused run, finished/failed on a stopped run change nothing; check ["status"] of the answer.
        Conflict otherwise (e.g. running on a stopped or finished run: an operator must start it)."""
        return self._json(
            "POST", f"/api/runs/{run_id}/status", idempotent=True, json={"status": status, "reason": reason}
        )

    def report_round(
        self,
        run_id: int,
        round: int,
        block_index: int,
        cohort: Iterable[str],
        status: str,
        reason: str | None = None,
        stats: dict | None = None,
    ) -> dict:
        """Service: what happened to block `block_index` in `round`; status in completed|skipped|rerun|failed."""
        body = {
            "round": round,
            "block_index": block_index,
            "cohort": list(cohort),
            "status": status,
            "reason": reason,
            "stats": stats or {},
        }
        return self._json("POST", f"/api/runs/{run_id}/rounds", json=body)

    def report_round_metrics(self, run_id: int, round: int, metrics: dict) -> dict:
        """Service: the assembled model's metrics after `round` (e.g. test_accuracy); a round-level report
        (status "evaluated", block_index 0, no cohort) that the run page charts as "assembled model"."""
        return self.report_round(run_id, round, 0, [], "evaluated", None, metrics)

    def list_rounds(
        self, run_id: int, *, block_index: int | None = None, round: int | None = None, limit: int | None = None
    ) -> list[dict]:
        return self._all(f"/api/runs/{run_id}/rounds", {"block_index": block_index, "round": round}, limit)

    def run_privacy(self, run_id: int) -> dict:
        """{"blocks": [per-block epsilon and history], "nodes": [per node: "epsilon_total" composed over all its
        releases in the run with "accountant", and the newest record per block]}."""
        return self._json("GET", f"/api/runs/{run_id}/privacy")

    # ---- block versions ---------------------------------------------------------------------------------------
    def register_block_version(
        self, run_id: int, block_index: int, spec_json: str, weights: bytes, meta: VersionMeta
    ) -> dict:
        """Service: register the weights of block `block_index` with their record `meta` (round, parent, cohort,
        privacy). Idempotent: the same (run, block, round) with the same sha256 returns the existing version
        with ["created"] == False; other weights for a registered round raise Conflict. The spec's sha256 must
        be the weights' (else InvalidRequest). Returns the version: ["id"], ["version"] (1, 2, ... per block),
        intervals, hashes, privacy fields."""
        return self._json(
            "POST",
            f"/api/runs/{run_id}/blocks/{block_index}/versions",
            idempotent=True,
            data={"meta": meta.model_dump_json(), "spec": spec_json},
            files={"weights": (f"block-{block_index}.safetensors", weights, "application/octet-stream")},
        )

    def latest_block_version(self, run_id: int, block_index: int) -> dict | None:
        """The newest version of a block, or None if it has none: where a restarted server resumes."""
        return self._json("GET", f"/api/runs/{run_id}/blocks/{block_index}/latest")

    def get_block_version(self, version_id: int) -> dict:
        """A version, including ["spec_json"] (BlockSpec.from_json) and ["sha256"]."""
        return self._json("GET", f"/api/versions/{version_id}")

    def download_weights(self, version_id: int, expected_sha256: str | None = None) -> bytes:
        """The version's safetensors bytes, verified against the registry's record (fetched if not given)."""
        expected = expected_sha256 or self.get_block_version(version_id)["sha256"]
        r = self._request("GET", f"/api/versions/{version_id}/weights")
        got = _sha256(r.content)
        if got != expected or r.headers.get("x-content-sha256", expected) != expected:
            raise IntegrityError(f"weights of version {version_id} hash to {got}, expected {expected}")
        return r.content

    def lineage(self, version_id: int) -> dict:
        """{"version", "audits", "ancestors": [{"version", "audits"}, ...]} (parent first)."""
        return self._json("GET", f"/api/versions/{version_id}/lineage")

    def list_block_versions(
        self,
        run_id: int | None = None,
        block_index: int | None = None,
        *,
        max_epsilon: float | None = None,
        max_client_epsilon: float | None = None,
        round: int | None = None,
        sha256: str | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Versions matching all given filters, oldest first. max_epsilon: record-level epsilon known and <= it."""
        return self._all(
            "/api/versions",
            {
                "run_id": run_id,
                "block_index": block_index,
                "max_epsilon": max_epsilon,
                "max_client_epsilon": max_client_epsilon,
                "round": round,
                "sha256": sha256,
            },
            limit,
        )

    # ---- nodes ----------------------------------------------------------------------------------------------------
    def register_node(
        self,
        display_name: str,
        organisation: str,
        public_key: str,
        fingerprint: str | None = None,
        secagg_identity: str | None = None,
    ) -> dict:
        """A node in status 'pending' (or the existing node with that key, ["created"] == False). `public_key`:
        PEM or an OpenSSH line; `fingerprint`, if given, must match it. Returns ["id"] ('node-' + 12 hex).
        `secagg_identity`: the node's SecAgg identity key (64 hex), if known already."""
        return self._json(
            "POST",
            "/api/nodes",
            idempotent=True,
            json={
                "display_name": display_name,
                "organisation": organisation,
                "public_key": public_key,
                "fingerprint": fingerprint,
                "secagg_identity": secagg_identity,
            },
        )

    def get_node(self, node_id: str) -> dict:
        return self._json("GET", f"/api/nodes/{node_id}")

    def approve_node(self, node_id: str, reason: str | None = None, secagg_identity: str | None = None) -> dict:
        """Approve a node; `secagg_identity` (64 hex) enrols its SecAgg identity key (once; a different one: 409)."""
        return self._json(
            "POST",
            f"/api/nodes/{node_id}/approve",
            idempotent=True,
            json={"reason": reason, "secagg_identity": secagg_identity},
        )

    def revoke_node(self, node_id: str, reason: str | None = None) -> dict:
        return self._json("POST", f"/api/nodes/{node_id}/revoke", idempotent=True, json={"reason": reason})

    def list_nodes(
        self, status: str | None = None, *, organisation: str | None = None, limit: int | None = None
    ) -> list[dict]:
        return self._all("/api/nodes", {"status": status, "organisation": organisation}, limit)

    def node_seen(self, node_id: str, info: dict | None = None) -> dict:
        """Service: heartbeat; returns the node (check ["status"] == "approved" before giving it work)."""
        return self._json("POST", f"/api/nodes/{node_id}/seen", idempotent=True, json={"info": info or {}})

    def record_node_privacy(
        self,
        node_id: str,
        run_id: int,
        block_index: int,
        round: int,
        epsilon: float,
        delta: float,
        accountant: str,
        *,
        sample_rate: float | None = None,
        steps: int | None = None,
    ) -> dict:
        """Service: the (epsilon, delta) this node's data has spent in the run up to `round`, composed with the
        run's accountant over all its releases (all rounds and blocks); `block_index`: the block of its newest
        release; `steps`: DP-SGD steps over all its releases."""
        body = {
            "run_id": run_id,
            "block_index": block_index,
            "round": round,
            "epsilon": epsilon,
            "delta": delta,
            "accountant": accountant,
            "sample_rate": sample_rate,
            "steps": steps,
        }
        return self._json("POST", f"/api/nodes/{node_id}/privacy", json=body)

    def node_privacy(self, node_id: str) -> dict:
        """{"node_id", "runs": [{"run_id", "epsilon_total", "delta_total", "accountant", "round", "per_block"}]}:
        epsilon_total is composed over all the node's releases in that run."""
        return self._json("GET", f"/api/nodes/{node_id}/privacy")

    # ---- audits ---------------------------------------------------------------------------------------------------
    def post_audit(
        self,
        block_version_id: int,
        attack: str,
        observation_point: str,
        adversary: str,
        config: dict,
        config_hash: str,
        seeds: Iterable[int],
        metrics: dict,
        controls: dict,
        verdict: str,
        artifacts: dict[str, bytes] | None = None,
    ) -> dict:
        """Researcher: an audit of a block version; verdict in pass|fail|inconclusive; artifacts maps plain file
        names (letters, digits, . _ -) to bytes. Returns the audit with ["artifacts"] (filename, sha256, ...)."""
        meta = {
            "block_version_id": block_version_id,
            "attack": attack,
            "observation_point": observation_point,
            "adversary": adversary,
            "config": config,
            "config_hash": config_hash,
            "seeds": list(seeds),
            "metrics": metrics,
            "controls": controls,
            "verdict": verdict,
        }
        files = [("artifacts", (name, data, "application/octet-stream")) for name, data in (artifacts or {}).items()]
        return self._json("POST", "/api/audits", data={"meta": json.dumps(meta)}, files=files or None)

    def list_audits(
        self,
        block_version_id: int | None = None,
        *,
        run_id: int | None = None,
        verdict: str | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Audits, newest first."""
        return self._all(
            "/api/audits", {"block_version_id": block_version_id, "run_id": run_id, "verdict": verdict}, limit
        )

    def get_audit(self, audit_id: int) -> dict:
        return self._json("GET", f"/api/audits/{audit_id}")

    def download_artifact(self, audit_id: int, filename: str) -> bytes:
        r = self._request("GET", f"/api/audits/{audit_id}/artifacts/{filename}")
        expected = r.headers.get("x-content-sha256")
        if expected is None or _sha256(r.content) != expected:
            raise IntegrityError(f"artifact {filename!r} of audit {audit_id} does not match its sha256 {expected}")
        return r.content
