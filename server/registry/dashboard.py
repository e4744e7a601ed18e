"""The operator dashboard: server-rendered pages (Jinja2) that refresh their panels with htmx polling and
draw charts with Chart.js from a JSON endpoint. All assets are served from /static (no CDN).

Pages: runs list (/), run (/runs/{id}), nodes (/nodes), audits (/audits, /audits/{id}), block version with
lineage (/versions/{id}), event log (/events). Login stores the API token in an HttpOnly cookie; every page
and action checks the token's role like the API does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timezone
from typing import Annotated, Literal
from urllib.parse import urlparse

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select

from .api import nodes as nodes_api
from .api import runs as runs_api
from .api.common import get_or_404, get_run, registry
from .auth import ALL_ROLES, COOKIE_NAME, OPERATORS, Allow, Principal, hash_token
from .budgets import block_budgets, node_budgets
from .lifecycle import OPERATOR_ACTIONS, TransitionError
from .models import ApiToken, Audit, BlockVersion, Event, Node, RoundReport, Run
from .schemas import RunControl

router = APIRouter(include_in_schema=False)
Viewer = Depends(Allow(ALL_ROLES))
Operator = Depends(Allow(OPERATORS))
COOKIE_MAX_AGE_S = 12 * 3600
RunPanel = Literal["header", "blocks", "rounds", "audits", "events"]


# ---- template helpers ---------------------------------------------------------------------------------------
def ago(t: datetime | None) -> str:
    if t is None:
        return "never"
    s = (datetime.now(timezone.utc) - t).total_seconds()
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
    return {"ago": ago, "num": fmt_num, "utc": lambda t: t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "–"}


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
        if b.owned_lo is None:
            continue
        rows.append({"block": b.block_index, "owned": (x(b.owned_lo), x(b.owned_hi)), "train": (x(b.train_lo), x(b.train_hi)),
                     "owned_sigma": (b.owned_lo, b.owned_hi), "train_sigma": (b.train_lo, b.train_hi)})
    ticks = [(x(10.0**k), f"1e{k}") for k in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
    return {"rows": rows, "ticks": ticks, "width": width, "height": 34 + 26 * len(rows), "left": left}


def block_rows(s, run: Run) -> list[dict]:
    """Per block: versions, latest version, rounds completed, last round report."""
    latest = {v.block_index: v for v in s.execute(
        select(BlockVersion).where(BlockVersion.run_id == run.id,
                                   BlockVersion.id.in_(select(func.max(BlockVersion.id)).where(BlockVersion.run_id == run.id)
                                                       .group_by(BlockVersion.block_index)))).scalars()}
    completed = dict(s.execute(select(RoundReport.block_index, func.count(func.distinct(RoundReport.round)))
                               .where(RoundReport.run_id == run.id, RoundReport.status == "completed")
                               .group_by(RoundReport.block_index)).all())
    last_report = {}
    for r in s.execute(select(RoundReport).where(RoundReport.run_id == run.id).order_by(RoundReport.id.desc()).limit(4 * run.num_blocks + 8)).scalars():
        last_report.setdefault(r.block_index, r)
    out = []
    for b in run.blocks:
        v = latest.get(b.block_index)
        done = completed.get(b.block_index, 0)
        out.append({"block": b, "latest": v, "completed": done, "last_report": last_report.get(b.block_index),
                    "progress": min(100.0, 100.0 * done / max(run.num_rounds, 1))})
    return out


def cohort_table(s, run: Run, max_rounds: int = 12) -> list[dict]:
    """Newest rounds first: {round, cells: {block: [reports]}}."""
    rounds = [r for (r,) in s.execute(select(RoundReport.round).where(RoundReport.run_id == run.id).distinct()
                                      .order_by(RoundReport.round.desc()).limit(max_rounds)).all()]
    cells: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    if rounds:
        for r in s.execute(select(RoundReport).where(RoundReport.run_id == run.id, RoundReport.round.in_(rounds))
                           .order_by(RoundReport.id)).scalars():
            cells[r.round][r.block_index].append(r)
    return [{"round": r, "cells": cells[r]} for r in rounds]


def node_names(s) -> dict[str, str]:
    return dict(s.execute(select(Node.id, Node.display_name)).all())


def run_charts(s, run: Run) -> dict:
    """Data of the run page's charts: metrics and epsilon over rounds per block, epsilon per node."""
    metrics: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for v in s.execute(select(BlockVersion.block_index, BlockVersion.round, BlockVersion.metrics)
                       .where(BlockVersion.run_id == run.id).order_by(BlockVersion.block_index, BlockVersion.round)).all():
        for k, val in (v.metrics or {}).items():
            if isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val):
                metrics[k][v.block_index].append([v.round, val])
    budgets = block_budgets(s, run.id, run.num_blocks)
    names = node_names(s)
    nodes = [{"node": names.get(n.node_id) or n.node_id, "per_block": {str(b): d["epsilon"] for b, d in n.per_block.items()},
              "total": n.epsilon_total} for n in node_budgets(s, run_id=run.id).values()]
    return {
        "num_blocks": run.num_blocks,
        "metrics": {k: {str(b): pts for b, pts in per.items()} for k, per in sorted(metrics.items())},
        "record_epsilon": {str(b.block_index): [[h["round"], h["record_epsilon"]] for h in b.history if h["record_epsilon"] is not None] for b in budgets},
        "client_epsilon": {str(b.block_index): [[h["round"], h["client_epsilon"]] for h in b.history if h["client_epsilon"] is not None] for b in budgets},
        "target_epsilon": run.dp.get("target_epsilon"),
        "nodes": nodes,
    }


def load_run(s, run_id: int) -> Run:
    run = get_run(s, run_id)
    _ = run.blocks  # load while the session is open
    return run


# ---- login ----------------------------------------------------------------------------------------------------
def _safe_next(target: str | None) -> str:
    """Only same-site paths, so the login form cannot be used to bounce users elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or urlparse(target).netloc:
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/"):
    return render(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login")
def login(request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/", reg=Depends(registry)):
    with reg.db.reader() as s:
        row = s.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token.strip()), ApiToken.revoked_at.is_(None))).scalar_one_or_none()
    if row is None:
        response = render(request, "login.html", None, next=_safe_next(next), error="Unknown or revoked token.")
        response.status_code = 401
        return response
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE_NAME, token.strip(), max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict", path="/")
    return response


@router.post("/logout")
def logout():
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


# ---- runs -------------------------------------------------------------------------------------------------------
def runs_context(s) -> dict:
    runs = s.execute(select(Run).order_by(Run.id.desc()).limit(200)).scalars().all()
    versions = dict(s.execute(select(BlockVersion.run_id, func.count()).group_by(BlockVersion.run_id)).all())
    max_eps = dict(s.execute(select(BlockVersion.run_id, func.max(BlockVersion.record_epsilon)).group_by(BlockVersion.run_id)).all())
    return {"runs": runs, "versions": versions, "max_eps": max_eps}


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        return render(request, "runs.html", who, page="runs", **runs_context(s))


@router.get("/ui/runs", response_class=HTMLResponse)
def runs_table(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        return render(request, "_runs_table.html", who, **runs_context(s))


def run_panel_context(s, run: Run, panel: str) -> dict:
    if panel == "header":
        return {"actions": list(OPERATOR_ACTIONS)}
    if panel == "blocks":
        return {"blocks": block_rows(s, run), "partition": partition_rows(run)}
    if panel == "rounds":
        return {"rounds": cohort_table(s, run), "names": node_names(s)}
    if panel == "audits":
        return {"audits": s.execute(select(Audit).where(Audit.run_id == run.id).order_by(Audit.id.desc()).limit(8)).scalars().all()}
    if panel == "events":
        return {"events": s.execute(select(Event).where(Event.run_id == run.id).order_by(Event.id.desc()).limit(15)).scalars().all()}
    raise HTTPException(404, f"no panel {panel!r}")


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        run = load_run(s, run_id)
        ctx: dict = {}
        for panel in RunPanel.__args__:
            ctx.update(run_panel_context(s, run, panel))
        return render(request, "run.html", who, page="runs", run=run, **ctx)


@router.get("/ui/runs/{run_id}/charts")
def run_charts_json(run_id: int, who: Principal = Viewer, reg=Depends(registry)) -> dict:
    with reg.db.reader() as s:
        return run_charts(s, load_run(s, run_id))


@router.get("/ui/runs/{run_id}/{panel}", response_class=HTMLResponse)
def run_panel(request: Request, run_id: int, panel: RunPanel, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        run = load_run(s, run_id)
        return render(request, f"_run_{panel}.html", who, run=run, **run_panel_context(s, run, panel))


@router.post("/ui/runs/{run_id}/control", response_class=HTMLResponse)
def run_control(request: Request, run_id: int, action: Annotated[str | None, Form()] = None,
                num_rounds: Annotated[str | None, Form()] = None, who: Principal = Operator, reg=Depends(registry)):
    error = None
    try:
        body = RunControl(action=action or None, num_rounds=int(num_rounds) if num_rounds else None)
        runs_api.control_run(run_id, body, who, reg)
    except (TransitionError, HTTPException, ValueError) as e:
        error = getattr(e, "detail", None) or str(e)
    with reg.db.reader() as s:
        run = load_run(s, run_id)
        return render(request, "_run_header.html", who, run=run, error=error, **run_panel_context(s, run, "header"))


# ---- nodes -------------------------------------------------------------------------------------------------------
def nodes_context(s) -> dict:
    nodes = s.execute(select(Node).order_by(Node.status.desc(), Node.created_at)).scalars().all()
    totals: dict[str, float] = defaultdict(float)
    for (nid, _), b in node_budgets(s).items():
        totals[nid] = max(totals[nid], b.epsilon_total)
    return {"nodes": nodes, "eps_max_run": totals}


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        return render(request, "nodes.html", who, page="nodes", **nodes_context(s))


@router.get("/ui/nodes", response_class=HTMLResponse)
def nodes_table(request: Request, who: Principal = Viewer, reg=Depends(registry)):
    with reg.db.reader() as s:
        return render(request, "_nodes_table.html", who, **nodes_context(s))


@router.post("/ui/nodes/{node_id}/{decision}", response_class=HTMLResponse)
def node_decision(request: Request, node_id: str, decision: Literal["approve", "revoke"], who: Principal = Operator, reg=Depends(registry)):
    nodes_api.decide(reg, who, node_id, "approved" if decision == "approve" else "revoked", f"{decision}d in the dashboard")
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
        return render(request, "events.html", who, page="events", events=events)
