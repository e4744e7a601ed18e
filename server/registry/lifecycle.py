"""Run status machine: which operator action or service report moves a run from which status to which.

    created --start--> running --pause--> paused --resume--> running
    created|running|paused --stop--> stopped
    stopped|failed|finished --start--> running     (restart: the federation resumes from the latest versions)
    service: created|failed --running--> running;  running|paused --finished--> finished;
             created|running|paused --failed--> failed

The operator's decisions stand against the service: "running" on a paused run, and "finished" or "failed"
on a stopped run, are accepted and change nothing (the answer carries the status that holds, so the
federation server sees "paused" and waits, or "stopped" and ends). Asking for the status a run already
has changes nothing either. Anything else is a conflict whose message names the current status and what
is allowed from it.
"""

from __future__ import annotations

from dataclasses import dataclass

OPERATOR_ACTIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({"created", "stopped", "failed", "finished"}), "running"),
    "pause": (frozenset({"running"}), "paused"),
    "resume": (frozenset({"paused"}), "running"),
    "stop": (frozenset({"created", "running", "paused"}), "stopped"),
}
SERVICE_STATUSES: dict[str, frozenset[str]] = {
    "running": frozenset({"created", "failed"}),
    "finished": frozenset({"running", "paused"}),
    "failed": frozenset({"created", "running", "paused"}),
}
TERMINAL = frozenset({"stopped", "finished", "failed"})
OPERATOR_STANDS: dict[str, frozenset[str]] = {  # service status -> run statuses it leaves as they are
    "running": frozenset({"paused"}),
    "finished": frozenset({"stopped"}),
    "failed": frozenset({"stopped", "finished"}),
}


class TransitionError(ValueError):
    """A status change that is not allowed from the run's current status."""


@dataclass(frozen=True)
class Transition:
    before: str
    after: str

    @property
    def changes(self) -> bool:
        return self.before != self.after


def operator_action(current: str, action: str) -> Transition:
    allowed_from, target = OPERATOR_ACTIONS[action]
    if current == target:
        return Transition(current, current)
    if current not in allowed_from:
        ok = sorted(a for a, (frm, _) in OPERATOR_ACTIONS.items() if current in frm)
        raise TransitionError(
            f"cannot {action} a run that is {current}; from {current} you may: {', '.join(ok) or 'nothing'}"
        )
    return Transition(current, target)


def service_status(current: str, status: str) -> Transition:
    if current == status or current in OPERATOR_STANDS[status]:
        return Transition(current, current)
    if current not in SERVICE_STATUSES[status]:
        raise TransitionError(
            f"cannot mark a {current} run as {status}; allowed from: {', '.join(sorted(SERVICE_STATUSES[status]))}"
        )
    return Transition(current, status)
