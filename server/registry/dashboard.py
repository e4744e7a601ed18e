"""The operator dashboard: server-rendered pages (Jinja2) that refresh their panels with htmx polling and
draw charts with Chart.js from a JSON endpoint. All assets are served from /static (no CDN).

Pages: runs list (/), run (/runs/{id}), nodes (/nodes), audits (/audits, /audits/{id}), block version with
lineage (/versions/{id}), event log (/events). Login stores the API token in an HttpOnly cookie; every page
and action checks the token's role like the API does.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast, get_args
from urllib.parse import urlparse

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape
from sqlalchemy import func, select

from .api import nodes as nodes_api
from .api import runs as runs_api
from .api.common import get_or_404, get_run, registry
from .auth import (
    ALL_ROLES,
    COOKIE_NAME,
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    OPERATORS,
    Allow,
    Principal,
    delete_cookie,
    hash_token,
    login_nonce,
    require_csrf,
    secrets_match,
    set_cookie,
)
from .budgets import node_budgets
from .lifecycle import OPERATOR_ACTIONS, TransitionError
from .models import ApiToken, Audit, BlockVersion, Event, Node, RoundReport, Run
from .nodemap import node_aliases, resolve, superlink_node_id
from .schemas import RunAction, RunControl

router = APIRouter(include_in_schema=False)
Viewer = Depends(Allow(ALL_ROLES))
Operator = Depends(Allow(OPERATORS))
COOKIE_MAX_AGE_S = 12 * 3600
RunPanel = Literal["header", "blocks", "rounds", "audits", "events"]


# ---- template helpers ---------------------------------------------------------------------------------------
def ago(t: datetime | None) -> str:
    if t is None:
        return "never"
    s = (datetime.now(UTC) - t).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return f"{max(int(s), 0)} s ago"


def fmt_num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(x)


def template_filters() -> dict:
    return {
        "ago": ago,
        "num": fmt_num,
        "utc": lambda t: t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "–",
        "superlink": superlink_node_id,
    }


def render(request: Request, template: str, who: Principal | None, **context) -> HTMLResponse:
    reg = request.app.state.registry
    can_operate = who is not None and who.role in OPERATORS
    return reg.templates.TemplateResponse(request, template, {"who": who, "can_operate": can_operate, **context})


# ---- views: what each page shows ----------------------------------------------------------------------------
def partition_rows(run: Run, width: float = 1000.0, left: float = 70.0, right: float = 20.0) -> dict:
    """Coordinates of the sigma partition drawing: one row per block, owned interval solid, training
    interval faint, on a log10 sigma axis from sigma_min (left) to sigma_max (right)."""
    lo, hi = float(run.schedule.get("sigma_min", 0.002)), float(run.schedule.get("sigma_max", 80.0))
    span = math.log10(hi) - math.log10(lo)

    def x(sigma: float) -> float:
        return left + (math.log10(min(max(sigma, lo), hi)) - math.log10(lo)) / span * (width - left - right)

    rows = []
    for b in run.blocks:
        if b.owned_lo is None or b.owned_hi is None or b.train_lo is None or b.train_hi is None:
            continue  # the intervals are set together, when the run is created
        rows.append(
            {
                "block": b.block_index,
                "owned": (x(b.owned_lo), x(b.owned_hi)),
                "train": (x(b.train_lo), x(b.train_hi)),
                "owned_sigma": (b.owned_lo, b.owned_hi),
                "train_sigma": (b.train_lo, b.train_hi),
            }
        )
    ticks = [(x(10.0**k), f"1e{k}") for k in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
    return {"rows": rows, "ticks": ticks, "width": width, "height": 34 + 26 * len(rows), "left": left}


REPORT_COLUMNS = (
    RoundReport.id,
    RoundReport.round,
    RoundReport.block_index,
    RoundReport.cohort,
    RoundReport.status,
    RoundReport.reason,
)


def block_rows(s, run: Run) -> list[dict]:
    """Per block: latest version, rounds completed, last round report."""
    latest = {
        v.block_index: v
        for v in s.execute(
            select(BlockVersion).where(
                BlockVersion.run_id == run.id,
                BlockVersion.id.in_(
                    select(func.max(BlockVersion.id))
                    .where(BlockVersion.run_id == run.id)
                    .group_by(BlockVersion.block_index)
                ),
            )
        ).scalars()
    }
    completed = dict(
        s.execute(
            select(RoundReport.block_index, func.count(func.distinct(RoundReport.round)))
            .where(RoundReport.run_id == run.id, RoundReport.status == "completed")
            .group_by(RoundReport.block_index)
        ).all()
    )
    last_report = {
        r.block_index: r
        for r in s.execute(
            select(*REPORT_COLUMNS).where(
                RoundReport.id.in_(
                    select(func.max(RoundReport.id))
                    .where(RoundReport.run_id == run.id, RoundReport.status != "evaluated")
                    .group_by(RoundReport.block_index)
                )
            )
        )
    }
    out = []
    for b in run.blocks:
        done = completed.get(b.block_index, 0)
        out.append(
            {
                "block": b,
                "latest": latest.get(b.block_index),
                "completed": done,
                "last_report": last_report.get(b.block_index),
                "progress": min(100.0, 100.0 * done / max(run.num_rounds, 1)),
            }
        )
    return out


def node_chips(cohort: list[str], names: dict[str, str]) -> Markup:
    """The cohort as name chips (HTML built once here: this is the dashboard's busiest loop)."""
    return Markup(
        "".join(f'<span class="node-chip" title="{escape(n)}">{escape(names.get(n, n))}</span>' for n in cohort)
    )


def cohort_table(s, run: Run, max_rounds: int = 12) -> list[dict]:
    """Newest rounds first: {round, cells: [per block: [{status, reason, chips}]]}."""
    rounds = [
        r
        for (r,) in s.execute(
            select(RoundReport.round)
            .where(RoundReport.run_id == run.id, RoundReport.status != "evaluated")
            .distinct()
            .order_by(RoundReport.round.desc())
            .limit(max_rounds)
        ).all()
    ]
    if not rounds:
        return []
    names = node_names(s)
    cells: dict[int, list[list[dict]]] = {r: [[] for _ in range(run.num_blocks)] for r in rounds}
    for r in s.execute(
        select(*REPORT_COLUMNS)
        .where(RoundReport.run_id == run.id, RoundReport.round.in_(rounds), RoundReport.status != "evaluated")
        .order_by(RoundReport.id)
    ):
        if 0 <= r.block_index < run.num_blocks:
            cells[r.round][r.block_index].append(
                {"status": r.status, "reason": r.reason, "chips": node_chips(r.cohort, names)}
            )
    return [{"round": r, "cells": cells[r]} for r in rounds]


def node_names(s) -> dict[str, str]:
    """{registry node id or SuperLink node id: company display name}: cohorts name their members by SuperLink
    node id (see `nodemap`)."""
    names = dict(s.execute(select(Node.id, Node.display_name)).all())
    return {alias: names[node_id] for alias, node_id in node_aliases(s).items() if node_id in names}


def run_charts(s, run: Run) -> dict:
    """Data of the run page's charts: metrics and epsilon over rounds per block, epsilon per node. Every epsilon is
    composed per company over all its releases in the run, by the accountant named in `accountant`. The assembled
    model's metrics after each round ("evaluated" round reports, e.g. test_accuracy) are the series "model"."""
    metrics: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    record_eps: dict[str, list] = {str(b): [] for b in range(run.num_blocks)}
    client_eps: dict[str, list] = {str(b): [] for b in range(run.num_blocks)}
    accountants: set[str] = set()
    for v in s.execute(
        select(
            BlockVersion.block_index,
            BlockVersion.round,
            BlockVersion.metrics,
            BlockVersion.record_epsilon,
            BlockVersion.client_epsilon,
            BlockVersion.accountant,
        )
        .where(BlockVersion.run_id == run.id)
        .order_by(BlockVersion.block_index, BlockVersion.version)
    ):
        b = str(v.block_index)
        for k, val in (v.metrics or {}).items():
            if isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val):
                metrics[k][b].append([v.round, val])
        if v.accountant:
            accountants.add(v.accountant)
        if v.record_epsilon is not None:
            record_eps[b].append([v.round, v.record_epsilon])
        if v.client_epsilon is not None:
            client_eps[b].append([v.round, v.client_epsilon])
    for r in s.execute(
        select(RoundReport.round, RoundReport.stats)
        .where(RoundReport.run_id == run.id, RoundReport.status == "evaluated")
        .order_by(RoundReport.round, RoundReport.id)
    ):
        for k, val in (r.stats or {}).items():
            if isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val):
                metrics[k]["model"].append([r.round, val])
    names = node_names(s)
    nodes: list[dict[str, Any]] = [
        {
            "node": names.get(n.node_id) or n.node_id,
            "total": n.epsilon_total,
            "accountant": n.accountant,
            "round": n.round,
        }
        for n in node_budgets(s, run_id=run.id).values()
    ]
    accountants |= {n["accountant"] for n in nodes if n["accountant"]}
    return {
        "num_blocks": run.num_blocks,
        "metrics": {k: dict(per) for k, per in sorted(metrics.items())},
        "record_epsilon": record_eps,
        "client_epsilon": client_eps,
        "target_epsilon": run.dp.get("target_epsilon"),
        "nodes": nodes,
        "accountant": ", ".join(sorted(accountants)) or run.dp.get("accountant"),
    }


def load_run(s, run_id: int, with_blocks: bool = True) -> Run:
    run = get_run(s, run_id)
    if with_blocks:
        _ = run.blocks  # load while the session is open
    return run


class FragmentCache:
    """Rendered dashboard fragments (panels, tables, chart data) reused for at most `max_age_s`, per process.

    Every open dashboard polls its panels every few seconds; with many dashboards open, most polls of a
    fragment arrive within a fraction of a second of each other and would render the same thing. A hit is
    served from memory in the event loop, with no database query and no thread. A fragment is therefore at
    most `max_age_s` old; dashboard actions (control, approve, revoke) clear this process's cache, and the
    API is never cached."""

    def __init__(self, max_age_s: float = 0.25, max_entries: int = 1024):
        self.max_age_s, self.max_entries = max_age_s, max_entries
        self._entries: dict[tuple, tuple[float, Response]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Response | None:
        with self._lock:
            hit = self._entries.get(key)
        if hit and time.monotonic() - hit[0] < self.max_age_s:
            return hit[1]
        return None

    def put(self, key: tuple, response: Response) -> Response:
        kept = Response(response.body, status_code=response.status_code, media_type=response.media_type)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (time.monotonic(), kept)
        return kept

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


async def fragment(request: Request, who: Principal, reg, render_in_thread) -> Response:
    """The cached fragment for this URL and kind of viewer, or render_in_thread() run in a worker thread."""
    key = (request.url.path, str(request.url.query), who.role in OPERATORS)
    if (hit := reg.fragments.get(key)) is not None:
        return hit
    return reg.fragments.put(key, await run_in_threadpool(render_in_thread))


# ---- login ----------------------------------------------------------------------------------------------------
def _safe_next(target: str | None) -> str:
    """Only same-site paths, so the login form cannot be used to bounce users elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or urlparse(target).netloc:
        return "/"
    return target


def login_form(request: Request, next: str, error: str | None, status_code: int = 200) -> HTMLResponse:
    """The login page; its form and the login cookie carry the same CSRF nonce (double submit)."""
    nonce = login_nonce(request)
    response = render(request, "login.html", None, next=_safe_next(next), error=error, login_csrf=nonce)
    response.status_code = status_code
    set_cookie(response, request, LOGIN_CSRF_COOKIE, nonce, max_age=COOKIE_MAX_AGE_S, path="/login")
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/"):
    return login_form(request, next, None)


@router.post("/login")
def login(
    request: Request,
    token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD)] = "",
    reg=Depends(registry),
):
    if not secrets_match(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
        return login_form(request, next, "This login form has expired or was not sent by this site: log in again.", 403)
    with reg.db.reader() as s:
        row = s.execute(
            select(ApiToken).where(ApiToken.token_hash == hash_token(token.strip()), ApiToken.revoked_at.is_(None))
        ).scalar_one_or_none()
    if row is None:
        return login_form(request, next, "Unknown or revoked token.", 401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_cookie(response, request, COOKIE_NAME, token.strip(), max_age=COOKIE_MAX_AGE_S)
    delete_cookie(response, request, LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: Annotated[str, Form(alias=CSRF_FIELD)] = ""):
    """Ends the session of the login cookie; the form must carry that session's CSRF token (without a cookie there
    is nothing to end)."""
    session = request.cookies.get(COOKIE_NAME)
    if session:
        require_csrf(session, csrf_token)
    response = RedirectResponse("/login", status_code=303)
    delete_cookie(response, request, COOKIE_NAME)
    return response


# ---- runs -------------------------------------------------------------------------------------------------------
def runs_context(s) -> dict:
    runs = s.execute(select(Run).order_by(Run.id.desc()).limit(200)).scalars().all()
    versions = dict(s.execute(select(BlockVersion.run_id, func.count()).group_by(BlockVersion.run_id)).all())
    max_eps = dict(
        s.execute(
            select(BlockVersion.run_id, func.max(BlockVersion.record_epsilon)).group_by(BlockVersion.run_id)
        ).all()
    )
    return {"runs": runs, "versions": versions, "max_eps": max_eps}


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        return render(request, "runs.html", who, page="runs", **runs_context(s))


@router.get("/ui/runs", response_class=HTMLResponse)
async def runs_table(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    def render_table():
        with reg.db.reader() as s:
            return render(request, "_runs_table.html", who, **runs_context(s))

    return await fragment(request, who, reg, render_table)


def failure_history(s, run: Run) -> dict:
    """The run's failures (newest first: {at, reason}) and whether it was resumed after one, from its status events:
    a failed run says so on its page, and a resumed run shows it was one (not only in the event log)."""
    failures, resumes = [], 0
    rows = s.execute(
        select(Event.at, Event.after).where(Event.run_id == run.id, Event.kind == "run.status").order_by(Event.id)
    ).all()
    for at, after in rows:
        st = (after or {}).get("status")
        if st == "failed":
            failures.append({"at": at, "reason": (after or {}).get("reason")})
        elif st == "running" and failures:
            resumes += 1
    return {"failures": failures[::-1], "resumes": resumes}


def run_panel_context(s, run: Run, panel: str) -> dict:
    if panel == "header":
        return {"actions": list(OPERATOR_ACTIONS), **failure_history(s, run)}
    if panel == "blocks":
        return {"blocks": block_rows(s, run), "partition": partition_rows(run)}
    if panel == "rounds":
        return {"rounds": cohort_table(s, run)}
    if panel == "audits":
        return {
            "audits": s.execute(select(Audit).where(Audit.run_id == run.id).order_by(Audit.id.desc()).limit(8))
            .scalars()
            .all()
        }
    if panel == "events":
        return {
            "names": node_names(s),  # node events by company name
            "events": s.execute(
                select(
                    Event.at,
                    Event.kind,
                    Event.subject_type,
                    Event.subject_id,
                    Event.actor,
                    Event.actor_role,
                    Event.after,
                )
                .where(Event.run_id == run.id)
                .order_by(Event.id.desc())
                .limit(15)
            ).all(),
        }
    raise HTTPException(404, f"no panel {panel!r}")


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        run = load_run(s, run_id)
        ctx: dict = {}
        for panel in get_args(RunPanel):
            ctx.update(run_panel_context(s, run, panel))
        return render(request, "run.html", who, page="runs", run=run, **ctx)


@router.get("/ui/runs/{run_id}/charts")
async def run_charts_json(request: Request, run_id: int, who: Principal = Viewer, reg=Depends(registry)) -> Response:
    def render_charts():
        with reg.db.reader() as s:
            data = run_charts(s, load_run(s, run_id, with_blocks=False))
        return Response(
            json.dumps(data, separators=(",", ":")), media_type="application/json"
        )  # plain data: no encoder pass

    return await fragment(request, who, reg, render_charts)


@router.get("/ui/runs/{run_id}/{panel}", response_class=HTMLResponse)
async def run_panel(request: Request, run_id: int, panel: RunPanel, who: Principal = Viewer, reg=Depends(registry)):
    def render_panel():
        with reg.db.reader() as s:
            run = load_run(s, run_id, with_blocks=panel == "blocks")
            return render(request, f"_run_{panel}.html", who, run=run, **run_panel_context(s, run, panel))

    return await fragment(request, who, reg, render_panel)


@router.post("/ui/runs/{run_id}/control", response_class=HTMLResponse)
def run_control(
    request: Request,
    run_id: int,
    action: Annotated[str | None, Form()] = None,
    num_rounds: Annotated[str | None, Form()] = None,
    who: Principal = Operator,
    reg=Depends(registry),
):
    error = None
    try:
        # a form str; RunControl (pydantic) validates it (its ValidationError is a ValueError)
        body = RunControl(
            action=cast(RunAction | None, action or None), num_rounds=int(num_rounds) if num_rounds else None
        )
        runs_api.control_run(run_id, body, who, reg)
    except (TransitionError, HTTPException, ValueError) as e:
        error = getattr(e, "detail", None) or str(e)
    reg.fragments.clear()  # the next poll shows the new state
    with reg.db.reader() as s:
        run = load_run(s, run_id, with_blocks=False)
        return render(request, "_run_header.html", who, run=run, error=error, **run_panel_context(s, run, "header"))


# ---- nodes -------------------------------------------------------------------------------------------------------
def node_work(s) -> dict[str, dict]:
    """Per registry node id: the block versions it helped train ("blocks") and the rounds it took part in
    ("rounds": distinct (run, round) of those versions), from the versions' cohorts resolved by `nodemap`."""
    aliases = node_aliases(s)
    work: dict[str, dict] = defaultdict(lambda: {"blocks": 0, "rounds": set()})
    for run_id, round_, cohort in s.execute(select(BlockVersion.run_id, BlockVersion.round, BlockVersion.cohort)):
        for node_id in resolve(cohort or [], aliases):
            work[node_id]["blocks"] += 1
            work[node_id]["rounds"].add((run_id, round_))
    return {n: {"blocks": w["blocks"], "rounds": len(w["rounds"])} for n, w in work.items()}


def node_epsilons(s) -> dict[str, dict]:
    """Per registry node id: the record-level epsilon its data spent in its newest run, composed over all its
    releases in that run by the run's accountant ({epsilon, delta, accountant, run_id, round}), and the largest
    such total over all its runs with how many runs there were (runs are not composed with each other here:
    a company that reuses its data composes across runs in its own ledger)."""
    out: dict[str, dict] = {}
    for (node_id, run_id), b in sorted(node_budgets(s).items(), key=lambda kv: kv[0][1]):
        prev = out.get(node_id)
        out[node_id] = {
            "epsilon": b.epsilon_total,
            "delta": b.delta_total,
            "accountant": b.accountant,
            "run_id": run_id,
            "round": b.round,
            "max_over_runs": max(b.epsilon_total, prev["max_over_runs"]) if prev else b.epsilon_total,
            "runs": prev["runs"] + 1 if prev else 1,
        }
    return out


def nodes_context(s) -> dict:
    nodes = s.execute(select(Node).order_by(Node.status.desc(), Node.created_at)).scalars().all()
    return {"nodes": nodes, "work": node_work(s), "epsilons": node_epsilons(s)}


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        return render(request, "nodes.html", who, page="nodes", **nodes_context(s))


@router.get("/ui/nodes", response_class=HTMLResponse)
async def nodes_table(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    def render_table():
        with reg.db.reader() as s:
            return render(request, "_nodes_table.html", who, **nodes_context(s))

    return await fragment(request, who, reg, render_table)


@router.post("/ui/nodes/{node_id}/{decision}", response_class=HTMLResponse)
def node_decision(
    request: Request,
    node_id: str,
    decision: Literal["approve", "revoke"],
    who: Principal = Operator,
    reg=Depends(registry),
):
    nodes_api.decide(
        reg, who, node_id, "approved" if decision == "approve" else "revoked", f"{decision}d in the dashboard"
    )
    reg.fragments.clear()
    with reg.db.reader() as s:
        return render(request, "_nodes_table.html", who, **nodes_context(s))


# ---- audits, versions, events --------------------------------------------------------------------------------------
@router.get("/audits", response_class=HTMLResponse)
def audits_page(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        audits = s.execute(select(Audit).order_by(Audit.id.desc()).limit(100)).scalars().all()
        return render(request, "audits.html", who, page="audits", audits=audits)


@router.get("/audits/{audit_id}", response_class=HTMLResponse)
def audit_page(request: Request, audit_id: int, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        audit = get_or_404(s, Audit, audit_id, "audit")
        version = s.get(BlockVersion, audit.block_version_id)
        return render(request, "audit.html", who, page="audits", audit=audit, version=version)


@router.get("/versions/{version_id}", response_class=HTMLResponse)
def version_page(request: Request, version_id: int, who: Principal = Viewer, reg=Depends(registry)):
    from .api.versions import lineage

    lin = lineage(version_id, who, reg)
    with reg.db.reader() as s:
        names = node_names(s)
    return render(request, "version.html", who, page="runs", lineage=lin, names=names)


@router.get("/events", response_class=HTMLResponse)
def events_page(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        events = s.execute(select(Event).order_by(Event.id.desc()).limit(200)).scalars().all()
        return render(request, "events.html", who, page="events", events=events, names=node_names(s))
