"""The server side: plans instances, relays announcements and encrypted shares, and unmasks the sums.

The server never sees a secret it is not meant to: shares travel encrypted between clients, and for each
member it asks for exactly one kind of share (self-seed shares for members whose masked input arrived, masking
key shares for members that announced but did not upload). Every method builds or consumes plain messages;
`driver.run_round` strings them together over any transport.

A client that does not answer a stage (timeout, crash, refusal) is a dropout of that stage, and so is one whose
reply is malformed (undecodable, wrong types, bad signature): its reason is recorded in `dropouts` and `events`,
never raised. An instance keeps going while every member still has enough responding neighbours; otherwise it
fails with a ThresholdError message in `failures` and the other instances of the round are unaffected.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import shamir
from .directory import Directory
from .errors import ProtocolRefusal, SecAggError, ThresholdError
from .graph import Policy, choose_params
from .keys import (
    Announcement,
    Cert,
    TrustStore,
    pair_seed,
    pair_sign,
    self_seed_commitment,
    verify_signature,
    view_statement,
    x25519_public,
)
from .messages import Message, field, get, header
from .plan import Plan, check_block, confirm_threshold_for, instance_key, min_survivors_for
from .prg import MaskExpander
from .quant import Extra, QuantSpec

MAX_RECONSTRUCTION_TRIES = 64
# what a malformed reply can raise while it is decoded: the sender becomes a dropout, the server goes on
MALFORMED = (SecAggError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


def _keys(reply: Message, name: str) -> list[str]:
    """reply[name] as a list of instance keys (missing: empty); anything else is a ProtocolRefusal."""
    value = reply.get(name, [])
    if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) for k in value):
        raise ProtocolRefusal(f"field {name!r} must be a list of instance keys")
    return list(value)


@dataclass(frozen=True)
class Layout:
    """What one block's contributions look like: update length, L2 clip norm, extras and the error target."""

    dim: int
    clip_norm: float
    extras: tuple[Extra, ...] = ()
    rel_error: float = 1e-4


@dataclass
class Aggregate:
    """The unmasked sum of one instance. update_sum/extras_sum: sums over `survivors` (count of them);
    error_bound: worst-case absolute quantisation error per update coordinate of the sum."""

    round: int
    block: str
    update_sum: np.ndarray
    extras_sum: dict[str, float]
    survivors: tuple[str, ...]
    not_announced: tuple[str, ...]  # dropped during setup / key sharing
    dropped_at_upload: tuple[str, ...]
    silent_at_unmask: tuple[str, ...]
    error_bound: float

    @property
    def count(self) -> int:
        return len(self.survivors)

    @property
    def mean_update(self) -> np.ndarray:
        return self.update_sum / self.count


@dataclass
class _Instance:
    plan: Plan
    announcements: dict[str, Announcement] = dc_field(default_factory=dict)
    shares: dict[tuple[str, str], bytes] = dc_field(default_factory=dict)  # (sender, receiver) -> sealed share
    announced: list[str] | None = None  # A, frozen when upload requests go out
    masked: dict[str, np.ndarray] = dc_field(default_factory=dict)
    survivors: list[str] | None = None  # S, frozen at confirm/unmask
    confirmations: dict[str, bytes] = dc_field(default_factory=dict)
    reveals: dict[str, dict[str, tuple[str, np.ndarray]]] = dc_field(default_factory=dict)  # helper -> peer -> ..
    views: dict[str, bytes] = dc_field(default_factory=dict)  # helper -> signature on its view (audit)
    failure: str | None = None
    result: Aggregate | None = None

    def fixed_announced(self) -> list[str]:
        """A; `upload_requests` fixes it before any later phase reads it."""
        if self.announced is None:
            raise SecAggError(f"instance {self.plan.key}: its announced set is not fixed yet")
        return self.announced

    def fixed_survivors(self) -> list[str]:
        """S; `_freeze_survivors` fixes it before the confirm and unmask phases read it."""
        if self.survivors is None:
            raise SecAggError(f"instance {self.plan.key}: its survivor set is not fixed yet")
        return self.survivors


class SecAggServer:
    """Coordinates any number of instances (one per (round, block)) in one session.

    `directory`: the signed directory of enrolled identities (`directory.py`), relayed to clients with every
    register, join and upload request and pinned here too; without one the server pins on first use (it is not
    the party the pinning protects)."""

    def __init__(
        self,
        session: bytes | None = None,
        *,
        policy: Policy = Policy(),
        trust: TrustStore | None = None,
        consistency_check: bool = False,
        directory: bytes | None = None,
    ):
        self.session = session or os.urandom(16)
        self.policy = policy
        self.trust = trust or TrustStore(tofu=True)
        self.consistency_check = consistency_check
        self.directory: bytes | None = None
        self.instances: dict[str, _Instance] = {}
        self.events: list[str] = []  # refusals and dropouts, for logs and tests
        self.dropouts: dict[tuple[str, str], str] = {}  # (stage, client) -> why its reply was not used
        if directory is not None:
            self.set_directory(directory)

    def set_directory(self, blob: bytes) -> None:
        """Relay (and pin) this signed directory from now on. Its signature is the clients' to check."""
        entries = Directory.from_bytes(blob).entries
        self.directory = bytes(blob)
        self.trust.pinned.update(entries)
        self.trust.tofu = False

    def _with_directory(self, msg: Message) -> Message:
        if self.directory is not None:
            msg["directory"] = self.directory
        return msg

    def _dropout(self, stage: str, cid: str, key: str | None, err: Exception) -> None:
        reason = f"{type(err).__name__}: {err}" if not isinstance(err, SecAggError) else str(err)
        self.dropouts[(stage, cid)] = reason
        self.events.append(f"{stage} {cid}{' ' + key if key else ''}: {reason}")

    # registration ----------------------------------------------------------------------------------------
    def registered(self, client_id: str, round_: int | None = None) -> bool:
        """Has a prekey cert of `client_id` (for `round_`, if given)."""
        if round_ is not None:
            return self.trust.has_cert(client_id, round_)
        return any(c == client_id for c, _ in self.trust.certs)

    def register_requests(self, client_ids: Iterable[str], round_: int = 0) -> dict[str, Message]:
        return {cid: self._with_directory(header("register", self.session, round_)) for cid in client_ids}

    def receive_register(self, replies: Mapping[str, Message]) -> list[str]:
        ok = []
        for cid, reply in replies.items():
            try:
                self._store_certs(cid, reply)
                ok.append(cid)
            except MALFORMED as err:
                self._dropout("register", cid, None, err)
        return ok

    def _store_certs(self, cid: str, reply: Message) -> None:
        """The prekey certs a reply carries (`certs`): each must be `cid`'s and verify under its pinned key."""
        blobs = get(reply, "certs", list)
        certs = [Cert.from_bytes(get({"cert": b}, "cert", bytes)) for b in blobs]
        for cert in certs:
            if cert.client_id != cid:
                raise ProtocolRefusal(f"cert is for {cert.client_id}")
        for cert in certs:
            self.trust.accept_cert(cert)

    # planning --------------------------------------------------------------------------------------------
    def add_plan(self, round_: int, block: str, cohort: Sequence[str], layout: Layout) -> Plan:
        """Fix the plan of instance (round, block). Every member must be registered."""
        check_block(block)
        key = instance_key(round_, block)
        if key in self.instances:
            raise ValueError(f"instance {key} is already planned (plans never change)")
        cohort = sorted(set(cohort))
        missing = [c for c in cohort if not self.registered(c, round_)]
        if missing:
            raise ValueError(
                f"instance {key}: members {missing} have no prekey for round {round_}; register them first"
            )
        n = len(cohort)
        params = choose_params(n, self.policy)
        quant = QuantSpec.plan(n, layout.dim, layout.clip_norm, layout.rel_error, layout.extras)
        plan = Plan(
            self.session,
            int(round_),
            block,
            tuple(cohort),
            params.k,
            params.t,
            min_survivors_for(n, params.t, self.policy),
            confirm_threshold_for(n, self.policy) if self.consistency_check else 0,
            quant,
        )
        self.instances[key] = _Instance(plan)
        return plan

    def plans(self, round_: int) -> list[Plan]:
        return [i.plan for i in self.instances.values() if i.plan.round == round_]

    def _live(self, round_: int) -> list[_Instance]:
        return [i for i in self.instances.values() if i.plan.round == round_ and i.failure is None]

    def _fail(self, inst: _Instance, reason: str) -> None:
        inst.failure = reason
        self.events.append(f"instance {inst.plan.key} failed: {reason}")

    # join (announce keys) ---------------------------------------------------------------------------------
    def join_requests(self, round_: int) -> dict[str, Message]:
        """Members of round `round_` instances that have not announced keys for them yet."""
        out: dict[str, Message] = {}
        for inst in self._live(round_):
            for cid in inst.plan.cohort:
                if cid not in inst.announcements:
                    msg = out.setdefault(
                        cid, self._with_directory({**header("join", self.session, round_), "instances": []})
                    )
                    self._add_plan_for_announce(msg, inst, cid)
        return out

    def _add_plan_for_announce(self, msg: Message, inst: _Instance, cid: str) -> None:
        key = inst.plan.key
        msg["instances" if msg["stage"] == "join" else "next"].append(key)
        msg[field(key, "plan")] = inst.plan.to_bytes()
        for v in inst.plan.neighbours(cid):
            if self.registered(v, inst.plan.round):
                msg[field(key, "cert", v)] = self.trust.cert(v, inst.plan.round).to_bytes()

    def receive_join(self, replies: Mapping[str, Message]) -> None:
        for cid, reply in replies.items():
            try:
                keys = _keys(reply, "instances")
                self._store_certs(cid, reply)
            except MALFORMED as err:
                self._dropout("join", cid, None, err)
                continue
            self._store_announcements(cid, reply, keys, "join")

    def _store_announcements(self, cid: str, reply: Message, keys: Iterable[str], stage: str) -> None:
        for key in keys:
            inst = self.instances.get(key)
            try:
                if inst is None or cid not in inst.plan.cohort:
                    raise ProtocolRefusal(f"unexpected announcement for {key}")
                if inst.announced is not None:
                    raise ProtocolRefusal(f"announcement for {key} after its upload stage began")
                ann = Announcement.from_bytes(get(reply, field(key, "ann"), bytes))
                ann.verify(self.trust.identity(cid), cid, inst.plan.digest)
                shares = {}
                for v in inst.plan.neighbours(cid):
                    if self.registered(v, inst.plan.round):
                        shares[(cid, v)] = get(reply, field(key, "share", v), bytes)
                inst.announcements[cid] = ann
                inst.shares.update(shares)
            except MALFORMED as err:
                self._dropout(stage, cid, key, err)

    # upload ----------------------------------------------------------------------------------------------
    def upload_requests(self, round_: int) -> dict[str, Message]:
        """Freeze each instance's announced set A and ask its members for masked inputs (with the plans of their
        next-round instances, so the reply also announces keys for those)."""
        out: dict[str, Message] = {}
        for inst in self._live(round_):
            plan = inst.plan
            announced = set(inst.announcements)
            while True:  # a member with fewer than t announced neighbours cannot take part
                thin = {u for u in announced if sum(v in announced for v in plan.neighbours(u)) < plan.threshold}
                if not thin:
                    break
                announced -= thin
                self.events.append(f"{plan.key}: {sorted(thin)} excluded, fewer than t announced neighbours")
            inst.announced = sorted(announced)
            if len(announced) < plan.min_survivors:
                self._fail(
                    inst,
                    f"{len(inst.announcements)} of {plan.n} members announced keys and "
                    f"{len(announced)} of them have >= {plan.threshold} announced neighbours; "
                    f"{plan.min_survivors} needed: too many dropped during setup",
                )
                continue
            for u in inst.announced:
                msg = out.setdefault(
                    u, self._with_directory({**header("upload", self.session, round_), "instances": [], "next": []})
                )
                key = plan.key
                msg["instances"].append(key)
                msg[field(key, "plan")] = plan.to_bytes()
                msg[field(key, "announced")] = list(inst.announced)
                for v in plan.neighbours(u):
                    if v in announced:
                        msg[field(key, "ann", v)] = inst.announcements[v].to_bytes()
                        msg[field(key, "share", v)] = inst.shares[(v, u)]
        for inst in self._live(round_ + 1):
            for u in inst.plan.cohort:
                if u in out and u not in inst.announcements:
                    self._add_plan_for_announce(out[u], inst, u)
        return out

    def receive_upload(self, replies: Mapping[str, Message]) -> None:
        for cid, reply in replies.items():
            try:
                keys, next_keys = _keys(reply, "instances"), _keys(reply, "next")
            except MALFORMED as err:
                self._dropout("upload", cid, None, err)
                continue
            for key in keys:
                inst = self.instances.get(key)
                try:
                    if inst is None or inst.announced is None or cid not in inst.announced:
                        raise ProtocolRefusal(f"unexpected masked input for {key}")
                    if inst.survivors is not None:
                        raise ProtocolRefusal(f"masked input for {key} arrived after the survivor set was fixed")
                    quant = inst.plan.quant
                    y = get(reply, field(key, "masked"), np.ndarray)
                    if y.dtype != quant.dtype or y.shape != (quant.length,):
                        raise ProtocolRefusal(
                            f"masked input has {y.dtype}{y.shape}, expected {quant.dtype}({quant.length},)"
                        )
                    if quant.bits < quant.dtype.itemsize * 8 and int(y.max(initial=0)) > quant.modulus_mask:
                        raise ProtocolRefusal("masked input has words above the modulus")
                    inst.masked[cid] = y
                except MALFORMED as err:
                    self._dropout("upload", cid, key, err)
            if next_keys:
                try:
                    self._store_certs(cid, reply)
                except MALFORMED as err:
                    self._dropout("announce", cid, None, err)
                    continue
            self._store_announcements(cid, reply, next_keys, "announce")

    # confirm (consistency mode) ---------------------------------------------------------------------------
    def _freeze_survivors(self, inst: _Instance) -> bool:
        """Fix S; fail early (with the reason) if S cannot be unmasked: too few survivors, or some member whose
        secret must be rebuilt has fewer than t surviving neighbours to hold its shares."""
        plan = inst.plan
        if inst.survivors is None:
            inst.survivors = sorted(inst.masked)
        alive = set(inst.survivors)
        if len(alive) < plan.min_survivors:
            self._fail(inst, f"only {len(alive)} masked inputs arrived, {plan.min_survivors} needed")
            return False
        for v in inst.fixed_announced():
            holders = sum(w in alive for w in plan.neighbours(v))
            if holders < plan.threshold:
                self._fail(
                    inst,
                    f"{v} has {holders} surviving neighbours to rebuild its "
                    f"{'self-mask' if v in alive else 'masking key'}, threshold {plan.threshold}: "
                    f"too many dropouts in its neighbourhood",
                )
                return False
        return True

    def _view_fields(self, msg: Message, inst: _Instance) -> None:
        key = inst.plan.key
        msg["instances"].append(key)
        msg[field(key, "announced")] = list(inst.fixed_announced())
        msg[field(key, "survivors")] = list(inst.fixed_survivors())

    def confirm_requests(self, round_: int) -> dict[str, Message]:
        out: dict[str, Message] = {}
        for inst in self._live(round_):
            if inst.plan.consistency and self._freeze_survivors(inst):
                for u in inst.fixed_survivors():
                    msg = out.setdefault(u, {**header("confirm", self.session, round_), "instances": []})
                    self._view_fields(msg, inst)
        return out

    def receive_confirm(self, replies: Mapping[str, Message]) -> None:
        for cid, reply in replies.items():
            try:
                keys = _keys(reply, "instances")
            except MALFORMED as err:
                self._dropout("confirm", cid, None, err)
                continue
            for key in keys:
                inst = self.instances.get(key)
                try:
                    if inst is None or inst.survivors is None or cid not in inst.survivors:
                        raise ProtocolRefusal(f"unexpected confirmation for {key}")
                    sig = get(reply, field(key, "confirm"), bytes)
                    statement = view_statement(inst.plan.digest, inst.fixed_announced(), inst.survivors)
                    verify_signature(self.trust.identity(cid), sig, statement, f"confirmation by {cid}")
                    inst.confirmations[cid] = sig
                except MALFORMED as err:
                    self._dropout("confirm", cid, key, err)

    # unmask ----------------------------------------------------------------------------------------------
    def unmask_requests(self, round_: int) -> dict[str, Message]:
        out: dict[str, Message] = {}
        for inst in self._live(round_):
            if not self._freeze_survivors(inst):
                continue
            plan = inst.plan
            if plan.consistency and len(inst.confirmations) < plan.confirm_threshold:
                self._fail(inst, f"{len(inst.confirmations)} confirmations < {plan.confirm_threshold}")
                continue
            for u in inst.fixed_survivors():
                msg = out.setdefault(u, {**header("unmask", self.session, round_), "instances": []})
                self._view_fields(msg, inst)
                if plan.consistency:
                    signers = sorted(inst.confirmations)
                    msg[field(plan.key, "signers")] = signers
                    msg[field(plan.key, "signatures")] = [inst.confirmations[s] for s in signers]
        return out

    def receive_unmask(
        self, replies: Mapping[str, Message], round_: int
    ) -> tuple[dict[str, Aggregate], dict[str, str]]:
        """Store revealed shares and finish every instance of the round: ({block: Aggregate}, {block: reason})."""
        for cid, reply in replies.items():
            try:
                keys = _keys(reply, "instances")
            except MALFORMED as err:
                self._dropout("unmask", cid, None, err)
                continue
            for key in keys:
                inst = self.instances.get(key)
                try:
                    self._store_reveal(inst, key, cid, reply)
                except MALFORMED as err:
                    self._dropout("unmask", cid, key, err)
        results, failures = {}, {}
        for inst in [i for i in self.instances.values() if i.plan.round == round_]:
            if inst.failure is None and inst.result is None:
                try:
                    inst.result = self._finish(inst)
                except SecAggError as err:
                    self._fail(inst, str(err))
            if inst.result is not None:
                results[inst.plan.block] = inst.result
            else:
                failures[inst.plan.block] = inst.failure or "not finished"
            # the instance is final (aggregated or failed; a later upload for it is refused): its n masked inputs
            # are never read again, and keeping them grew the server by n x dim words per instance and round
            inst.masked = {}
        self.trust.forget_before(round_ + 1)  # prekeys of finished rounds are never used again
        return results, failures

    def _store_reveal(self, inst: _Instance | None, key: str, cid: str, reply: Message) -> None:
        if inst is None or inst.survivors is None or cid not in inst.survivors:
            raise ProtocolRefusal(f"unexpected reveal for {key}")
        peers = get(reply, field(key, "peers"), list)
        kinds = get(reply, field(key, "kinds"), list)
        shares = get(reply, field(key, "shares"), np.ndarray)
        if len(peers) != len(kinds) or shares.shape != (len(peers), shamir.WORDS_PER_SECRET):
            raise ProtocolRefusal("malformed reveal")
        alive, announced = set(inst.survivors), set(inst.fixed_announced())
        mine = set(inst.plan.neighbours(cid))
        got = {}
        if shares.dtype.kind not in "ui" or (shares.size and int(shares.max()) >= shamir.PRIME):
            raise ProtocolRefusal("malformed reveal: shares are not field elements")
        for peer, kind, row in zip(peers, kinds, shares):
            expected = "b" if peer in alive else "e"
            if peer not in mine or peer not in announced or kind != expected:
                raise ProtocolRefusal(f"{cid} revealed a {kind!r} share of {peer}, expected {expected!r}")
            got[peer] = (kind, np.asarray(row, dtype=np.int64))
        sig = get(reply, field(key, "view"), bytes)
        verify_signature(
            self.trust.identity(cid),
            sig,
            view_statement(inst.plan.digest, inst.fixed_announced(), inst.survivors),
            f"view of {cid}",
        )
        inst.reveals[cid], inst.views[cid] = got, sig

    @staticmethod
    def _reveal_index(inst: _Instance) -> dict[tuple[str, str], list[tuple[int, np.ndarray]]]:
        """(peer, kind) -> [(x of the helper, its share row)] over every stored reveal: one pass over the reveals
        (O(n k)) instead of one pass per rebuilt secret (O(n^2 k) per instance)."""
        index: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
        for h, rows in inst.reveals.items():
            x = inst.plan.x(h)
            for peer, (kind, row) in rows.items():
                index.setdefault((peer, kind), []).append((x, row))
        return index

    def _rebuild(
        self,
        inst: _Instance,
        peer: str,
        kind: str,
        index: Mapping[tuple[str, str], list[tuple[int, np.ndarray]]] | None = None,
    ) -> bytes:
        """Rebuild `peer`'s secret of `kind` from t revealed shares; verify it against the announcement.
        `index`: `_reveal_index(inst)`, when many secrets of one instance are rebuilt."""
        plan = inst.plan
        if index is not None:
            points = sorted(index.get((peer, kind), []), key=lambda p: p[0])
        else:
            points = sorted(
                (
                    (plan.x(h), rows[peer][1])
                    for h, rows in inst.reveals.items()
                    if peer in rows and rows[peer][0] == kind
                ),
                key=lambda p: p[0],
            )
        if len(points) < plan.threshold:
            raise ThresholdError(
                f"instance {plan.key}: {len(points)} shares of {peer}'s "
                f"{'self-mask seed' if kind == 'b' else 'masking key'}"
                f" arrived, {plan.threshold} needed (too many of its neighbours dropped); the block's aggregate for "
                f"this round is lost"
            )
        ann = inst.announcements[peer]
        for subset in itertools.islice(itertools.combinations(points, plan.threshold), MAX_RECONSTRUCTION_TRIES):
            xs = [p[0] for p in subset]
            try:
                secret = shamir.elements_to_secret(shamir.reconstruct(xs, np.stack([p[1] for p in subset])))
            except ValueError:
                continue
            if kind == "b" and self_seed_commitment(plan.digest, peer, secret) == ann.seed_commitment:
                return secret
            if kind == "e" and x25519_public(secret) == ann.mask_public:
                return secret
        raise ProtocolRefusal(
            f"instance {plan.key}: revealed shares of {peer} are inconsistent with its commitment "
            f"(a helper sent wrong shares)"
        )

    def _finish(self, inst: _Instance) -> Aggregate:
        plan, quant = inst.plan, inst.plan.quant
        survivors, announced = inst.fixed_survivors(), inst.fixed_announced()
        alive = set(survivors)
        dropped = [v for v in announced if v not in alive]
        total = np.zeros(quant.length, dtype=quant.dtype)
        for u in survivors:
            np.add(total, inst.masked[u], out=total)
        expander = MaskExpander(quant.length, quant.dtype)
        index = self._reveal_index(inst)
        for u in survivors:
            expander.add(total, self._rebuild(inst, u, "b", index), -1)
        for v in dropped:
            mask_private = X25519PrivateKey.from_private_bytes(self._rebuild(inst, v, "e", index))
            for w in plan.neighbours(v):
                if w in alive:  # w added pair_sign(w, v) * PRG(s_wv); take it out
                    seed = pair_seed(mask_private, inst.announcements[w].mask_public, plan.digest, v, w)
                    expander.add(total, seed, -pair_sign(w, v))
        total &= quant.dtype.type(quant.modulus_mask)
        update_sum, extras_sum = quant.decode_sum(total, len(survivors))
        return Aggregate(
            plan.round,
            plan.block,
            update_sum,
            extras_sum,
            tuple(survivors),
            tuple(c for c in plan.cohort if c not in announced),
            tuple(dropped),
            tuple(u for u in survivors if u not in inst.reveals),
            float(quant.max_abs_error(len(survivors))[0]),
        )
