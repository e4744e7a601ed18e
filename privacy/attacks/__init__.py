"""Leakage attacks against DiffusionBlocks block updates, and the audits built from them (`dbaudit`).

Updates (`updates`): BlockUpdate / UpdateMeta, save_update / load_update (safetensors + JSON sidecar),
clip_delta, aggregate, release (clip + sum + central noise + mean), dp_local_update (train_block_dp + clip);
`local`: LocalTraining, local_update, simulate_update (a client's plain local steps, differentiable).

Attacks:
  closed_form_attack / closed_form_sequence   exact inversion of a single-record block gradient
  invert + ATTACKS["dlg" | "idlg" | "inversion" | "dlg-scales"]   gradient matching (multi-step, aggregates)
  membership_audit (loss threshold + LiRA over target/shadow blocks)
  record_canary_audit / client_canary_audit + bound_from_scores / epsilon_lower_bound  (one-run audit)
  noise_conformance                          measured noise std and norm bound of a release
Metrics: score_reconstructions (PSNR, SSIM, IIP, share > 20 dB, mean/random-record baselines), roc_metrics.
Audits: AuditSpec, AuditTarget, run_audit -> AuditRecord (audit.json + PNGs); render_report (HTML).
"""

from .canary import bound_from_scores, client_canary_audit, epsilon_lower_bound, p_value, record_canary_audit
from .closed_form import ClosedFormResult, closed_form_attack, closed_form_sequence
from .conformance import ConformanceResult, noise_conformance
from .inversion import ATTACKS, MatchingConfig, MatchingTarget, RoundObservation, invert
from .local import LocalTraining, local_update, simulate_update
from .membership import MembershipConfig, membership_audit
from .metrics import roc_metrics, score_reconstructions
from .record import AuditRecord
from .runner import AuditSpec, AuditTarget, run_audit
from .scenario import FederationScenario, observe
from .updates import BlockUpdate, UpdateMeta, aggregate, clip_delta, dp_local_update, load_update, release, save_update

__all__ = [
    "ATTACKS",
    "AuditRecord",
    "AuditSpec",
    "AuditTarget",
    "BlockUpdate",
    "ClosedFormResult",
    "ConformanceResult",
    "FederationScenario",
    "LocalTraining",
    "MatchingConfig",
    "MatchingTarget",
    "MembershipConfig",
    "RoundObservation",
    "UpdateMeta",
    "aggregate",
    "bound_from_scores",
    "client_canary_audit",
    "clip_delta",
    "closed_form_attack",
    "closed_form_sequence",
    "dp_local_update",
    "epsilon_lower_bound",
    "invert",
    "load_update",
    "local_update",
    "membership_audit",
    "noise_conformance",
    "observe",
    "p_value",
    "record_canary_audit",
    "release",
    "roc_metrics",
    "run_audit",
    "save_update",
    "score_reconstructions",
    "simulate_update",
]
