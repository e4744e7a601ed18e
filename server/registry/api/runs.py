"""Runs: create, list, read; run control (operators) and status reports and round reports (service)."""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from .. import events
from ..auth import ALL_ROLES, OPERATORS, RUN_CREATORS, SERVICE, Allow, Principal
from ..budgets import run_privacy
from ..lifecycle import TERMINAL, Transition, operator_action, service_status
from ..models import Block, RoundReport, Run, utcnow
from ..schemas import (
    ControlState,
    Page,
    RoundReportIn,
    RoundReportOut,
    RunControl,
    RunCreate,
    RunOut,
    RunStatus,
    RunStatusSet,
    RunSummary,
)
from .common import IdPath, IdQuery, Limit, Offset, check_block_index, get_run, paginate, registry

router = APIRouter(tags=["runs"])


def schedule_intervals(schedule: dict, num_blocks: int) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """(owned, training) sigma interval of every block, from a NoiseSchedule dict; 422 if it is not one."""
    from dblocks.shared.schedule import NoiseSchedule  # imports torch: only when a run is created

    try:
        sched = NoiseSchedule.from_dict(schedule)
    except (TypeError, ValueError) as e:
        raise HTTPException(422, f"schedule is not a valid NoiseSchedule ({e}); send NoiseSchedule.to_dict()") from None
    if sched.num_blocks != num_blocks:
        raise HTTPException(422, f"schedule.num_blocks is {sched.num_blocks} but num_blocks is {num_blocks}")
    return [(sched.owned_interval(i), sched.training_interval(i)) for i in range(num_blocks)]


def control_state(run: Run) -> ControlState:
    return ControlState(
        run_id=run.id,
        status=cast(RunStatus, run.status),  # a str column; ControlState (pydantic) validates it
        num_rounds=run.num_rounds,
        current_round=run.current_round,
        status_reason=run.status_reason,
        updated_at=run.updated_at,
    )


def apply_transition(run: Run, t: Transition, reason: str | None) -> None:
    now = utcnow()
    run.status, run.status_reason, run.updated_at = t.after, reason, now
    if t.after == "running" and (run.started_at is None or t.before in TERMINAL):
        run.started_at, run.finished_at = now, None
    if t.after in TERMINAL:
        run.finished_at = now


@router.post("/runs", status_code=201, response_model=RunOut, summary="Create a run (status: created)")
def create_run(body: RunCreate, who: Principal = Depends(Allow(RUN_CREATORS)), reg=Depends(registry)):
    intervals = schedule_intervals(body.schedule, body.num_blocks)
    with reg.db.writer() as s:
        run = Run(
            name=body.name or body.task,
            task=body.task,
            dataset=body.dataset,
            num_blocks=body.num_blocks,
            schedule=body.schedule,
            secagg=body.secagg,
            dp=body.dp,
            num_rounds=body.num_rounds,
            created_by=body.created_by or who.name,
            status="created",
        )
        s.add(run)
        s.flush()
        for i, ((olo, ohi), (tlo, thi)) in enumerate(intervals):
            s.add(Block(run_id=run.id, block_index=i, owned_lo=olo, owned_hi=ohi, train_lo=tlo, train_hi=thi))
        events.record(
            s,
            who,
            "run.created",
            "run",
            run.id,
            run_id=run.id,
            after={
                "status": run.status,
                "task": run.task,
                "num_blocks": run.num_blocks,
                "num_rounds": run.num_rounds,
                "created_by": run.created_by,
            },
        )
        s.flush()
        return RunOut.model_validate(run)


@router.get("/runs", response_model=Page[RunSummary], summary="List runs, newest first")
def list_runs(
    status: RunStatus | None = None,
    task: str | None = None,
    limit: int = Limit,
    offset: int = Offset,
    _: Principal = Depends(Allow(ALL_ROLES)),
    reg=Depends(registry),
):
    stmt = select(Run).order_by(Run.id.desc())
    if status:
        stmt = stmt.where(Run.status == status)
    if task:
        stmt = stmt.where(Run.task == task)
    with reg.db.reader() as s:
        return paginate(s, stmt, limit, offset, RunSummary)


@router.get("/runs/{run_id}", response_model=RunOut)
def read_run(run_id: IdPath, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)):
    with reg.db.reader() as s:
        run = s.execute(select(Run).where(Run.id == run_id).options(selectinload(Run.blocks))).scalar_one_or_none()
        if run is None:
            raise HTTPException(404, f"run {run_id} does not exist")
        return RunOut.model_validate(run)


@router.get(
    "/runs/{run_id}/control", response_model=ControlState, summary="What the federation server polls each round"
)
def read_control(run_id: IdPath, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)):
    with reg.db.reader() as s:  # only the columns it needs: this is the most frequent request of all
        row = s.execute(
            select(Run.id, Run.status, Run.num_rounds, Run.current_round, Run.status_reason, Run.updated_at).where(
                Run.id == run_id
            )
        ).one_or_none()
    if row is None:
        raise HTTPException(404, f"run {run_id} does not exist")
    return ControlState(
        run_id=row.id,
        status=row.status,
        num_rounds=row.num_rounds,
        current_round=row.current_round,
        status_reason=row.status_reason,
        updated_at=row.updated_at,
    )


@router.post(
    "/runs/{run_id}/control",
    response_model=ControlState,
    summary="Operator: start, pause, resume, stop, change num_rounds",
)
def control_run(run_id: IdPath, body: RunControl, who: Principal = Depends(Allow(OPERATORS)), reg=Depends(registry)):
    with reg.db.writer() as s:
        run = get_run(s, run_id, lock=True)
        before = {"status": run.status, "num_rounds": run.num_rounds}
        if body.num_rounds is not None and body.num_rounds != run.num_rounds:
            if body.num_rounds < run.current_round:
                raise HTTPException(
                    422, f"num_rounds {body.num_rounds} is below the {run.current_round} rounds already reported"
                )
            run.num_rounds, run.updated_at = body.num_rounds, utcnow()
        if body.action is not None:
            t = operator_action(run.status, body.action)
            if t.changes:
                apply_transition(run, t, body.reason)
        after = {"status": run.status, "num_rounds": run.num_rounds}
        if after != before:
            events.record(
                s,
                who,
                "run.control",
                "run",
                run.id,
                run_id=run.id,
                before=before,
                after={**after, "action": body.action, "reason": body.reason},
            )
        return control_state(run)


@router.post(
    "/runs/{run_id}/status", response_model=ControlState, summary="Service: report running, finished or failed"
)
def set_run_status(run_id: IdPath, body: RunStatusSet, who: Principal = Depends(Allow(SERVICE)), reg=Depends(registry)):
    with reg.db.writer() as s:
        run = get_run(s, run_id, lock=True)
        t = service_status(run.status, body.status)
        if t.changes:
            apply_transition(run, t, body.reason)
            events.record(
                s,
                who,
                "run.status",
                "run",
                run.id,
                run_id=run.id,
                before={"status": t.before},
                after={"status": t.after, "reason": body.reason},
            )
        return control_state(run)


@router.post(
    "/runs/{run_id}/rounds",
    status_code=201,
    response_model=RoundReportOut,
    summary="Service: what happened to a block in a round",
)
def report_round(run_id: IdPath, body: RoundReportIn, who: Principal = Depends(Allow(SERVICE)), reg=Depends(registry)):
    with reg.db.writer() as s:
        run = get_run(s, run_id, lock=True)
        check_block_index(run, body.block_index)
        report = RoundReport(run_id=run.id, created_by=who.name, **body.model_dump())
        s.add(report)
        if body.round > run.current_round:
            run.current_round = body.round
        run.updated_at = utcnow()
        s.flush()
        events.record(
            s,
            who,
            "round.reported",
            "round_report",
            report.id,
            run_id=run.id,
            after={
                "round": body.round,
                "block_index": body.block_index,
                "status": body.status,
                "cohort_size": len(body.cohort),
                "reason": body.reason,
            },
        )
        return RoundReportOut.model_validate(report)


@router.get("/runs/{run_id}/rounds", response_model=Page[RoundReportOut], summary="Round reports, oldest first")
def list_rounds(
    run_id: IdPath,
    block_index: IdQuery = None,
    round: IdQuery = None,
    limit: int = Limit,
    offset: int = Offset,
    _: Principal = Depends(Allow(ALL_ROLES)),
    reg=Depends(registry),
):
    stmt = (
        select(RoundReport)
        .where(RoundReport.run_id == run_id)
        .order_by(RoundReport.round, RoundReport.block_index, RoundReport.id)
    )
    if block_index is not None:
        stmt = stmt.where(RoundReport.block_index == block_index)
    if round is not None:
        stmt = stmt.where(RoundReport.round == round)
    with reg.db.reader() as s:
        get_run(s, run_id)
        return paginate(s, stmt, limit, offset, RoundReportOut)


@router.get("/runs/{run_id}/privacy", summary="Privacy spent per block and per node")
def read_run_privacy(run_id: IdPath, _: Principal = Depends(Allow(ALL_ROLES)), reg=Depends(registry)) -> dict:
    with reg.db.reader() as s:
        run = get_run(s, run_id)
        return run_privacy(s, run.id, run.num_blocks)
