"""The audit record: everything needed to reproduce and judge one audit, written as audit.json + PNGs.

Verdicts: "pass" (the positive control succeeded and the audited observation leaks no more than the claim
allows), "fail" (it leaks more: the claim is wrong or the configuration is broken), "inconclusive" (the positive
control failed, or there is no ground truth to score against: a "safe" result would mean nothing).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

ATTACK_CODE_VERSION = "dblocks-audits/1"
VERDICTS = ("pass", "fail", "inconclusive")
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 3}


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of `config` (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def code_version() -> str:
    try:
        from importlib.metadata import version

        return f"{ATTACK_CODE_VERSION} (dblocks {version('dblocks')})"
    except Exception:
        return ATTACK_CODE_VERSION


@dataclass
class AuditRecord:
    attack: str
    observation_point: str
    adversary: str
    block: dict  # id, task, block_index, owned/training noise interval, sha256
    rounds: list[int]
    config: dict
    seeds: dict
    dp: dict  # record-level DP-SGD settings and the accountant's (epsilon, delta, sample rate, steps)
    secagg: dict  # clients aggregated, clip norm, central noise multiplier and std, reduction
    metrics: dict  # name -> value or {value, low, high, n}
    controls: dict  # name -> {passed, ...}
    verdict: str
    reasons: list[str]
    scope: str
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> file name beside audit.json
    code_version: str = field(default_factory=code_version)
    config_hash: str = ""
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        self.config_hash = self.config_hash or config_hash(self.config)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict:
        """JSON-safe: non-finite floats (a PSNR of an unrecoverable image, an undefined ratio) become None."""
        return _finite(asdict(self))

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "audit.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))
        return path

    @classmethod
    def read(cls, path: str | Path) -> AuditRecord:
        d = json.loads(Path(path).read_text())
        return cls(**d)

    def summary(self) -> str:
        head = (
            f"{self.verdict.upper()}: {self.attack} at {self.observation_point} ({self.adversary}), "
            f"block {self.block.get('block_index')}"
        )
        return head + "".join(f"\n  - {r}" for r in self.reasons)


def _finite(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, float):
        return None
    return str(o)


def decide(checks: list[tuple[bool, str]], control_ok: bool, control_reason: str) -> tuple[str, list[str]]:
    """Verdict from (failed?, reason) checks and the positive control: any failed check fails the audit; else it
    passes only if the positive control ran and succeeded (a skipped control leaves it inconclusive)."""
    failed = [reason for bad, reason in checks if bad]
    if failed:
        return "fail", failed
    if not control_ok:
        return "inconclusive", [control_reason]
    return "pass", [reason for bad, reason in checks if not bad] or ["no check failed"]
