"""The client side of the protocol: a state machine that answers server messages with plain messages.

Per instance a client goes announced -> uploaded [-> confirmed] -> unmasked, and every step is allowed once:
- announce (in a `join` reply, or piggy-backed on the previous round's `upload` reply): a fresh masking key pair
  (e_u, E_u), seal key pair (k_u, K_u) and self-mask seed b_u for that instance only; E_u, K_u and a commitment
  to b_u are signed; Shamir shares of e_u and b_u go to each neighbour v, sealed under X25519(k_u, P_v) with v's
  prekey for the round; k_u is erased at once. The reply also certifies this client's prekeys for the next
  rounds (`PREKEY_LOOKAHEAD`).
- upload: y_u = encode(x_u) + PRG(b_u) + sum_v sign(u,v) PRG(s_uv) mod 2^bits over the neighbours v that
  announced; then e_u, b_u and this round's prekey are erased (the client can never mask twice with them, and
  the shares it received can no longer be opened from what it keeps).
- confirm (consistency mode only): sign the server's claimed (A, S) once.
- unmask: for each announced neighbour v reveal exactly one share: of b_v if v is in S, of e_v otherwise, after
  checking that S is plausible (the client is in S, S within A, A equal to what it masked with, enough
  survivors, in consistency mode enough valid signatures on the same view). A second unmask request for the same
  instance gets the cached answer if identical and a refusal otherwise: no peer ever gets both shares revealed.

Trust: a peer's identity key comes from the signed directory (`directory.py`) the server relays; with a
`DirectoryView` every request's directory is verified and pinned, and a client with `require_consistency` refuses
any plan without the consistency check. Everything a client refuses raises `ProtocolRefusal` and leaves its state
unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import shamir
from .directory import DirectoryView
from .errors import ProtocolRefusal, SecAggError
from .graph import Policy
from .keys import (
    Announcement,
    Cert,
    Identity,
    TrustStore,
    new_x25519,
    open_sealed,
    pair_seed,
    pair_sign,
    seal,
    seal_key,
    self_seed_commitment,
    share_ad,
    verify_signature,
    view_statement,
    x25519_public,
)
from .messages import Message, check_header, field, get, header
from .plan import Plan
from .prg import MaskExpander

SHARE_WORDS = 2 * shamir.WORDS_PER_SECRET  # words 0..15: masking key e, 16..31: self seed b
PREKEY_LOOKAHEAD = 2  # a reply about round r certifies prekeys up to round r + 2 (one missed reply is harmless)


@dataclass
class Contribution:
    """What a client aggregates in one instance: the clipped update and the plan's named extras."""

    update: np.ndarray
    extras: dict[str, float] = dc_field(default_factory=dict)


@dataclass
class _Instance:
    plan: Plan
    status: str  # announced | uploaded | confirmed | unmasked
    mask_private: bytes | None
    self_seed: bytes | None
    announced: list[str] | None = None  # A as given at upload
    held: dict[str, np.ndarray] = dc_field(default_factory=dict)  # peer -> 32 share words
    confirmed_view: bytes | None = None
    unmask_digest: bytes | None = None
    unmask_reply: Message | None = None


def _request_digest(msg: Mapping) -> bytes:
    h = hashlib.sha256()
    for key in sorted(msg):
        value = msg[key]
        h.update(key.encode() + b"\0")
        if isinstance(value, np.ndarray):
            h.update(value.tobytes())
        elif isinstance(value, (list, tuple)):
            for item in value:
                h.update((item if isinstance(item, bytes) else str(item).encode()) + b"\1")
        else:
            h.update(value if isinstance(value, bytes) else str(value).encode())
        h.update(b"\2")
    return h.digest()


class SecAggClient:
    """One client. `identity` holds its long-term signing key; `trust` the pinned identities of its peers;
    `directory` (if given) the directory key it verifies the relayed directory with."""

    def __init__(
        self,
        client_id: str,
        identity: Identity | None = None,
        *,
        policy: Policy = Policy(),
        trust: TrustStore | None = None,
        directory: DirectoryView | None = None,
        require_consistency: bool = False,
    ):
        self.identity = identity or Identity(client_id)
        if self.identity.client_id != client_id:
            raise ValueError(f"identity is for {self.identity.client_id}, not {client_id}")
        self.client_id = client_id
        self.policy = policy
        self.trust = trust or TrustStore()
        self.trust.pinned.setdefault(client_id, self.identity.public)
        self.directory = directory
        self.require_consistency = require_consistency
        self.session: bytes | None = None
        self.instances: dict[str, _Instance] = {}
        self.prekeys: dict[int, bytes] = {}  # protocol round -> X25519 private prekey (erased after use)
        self.last_round = -1  # the last round this client uploaded in (replay protection)

    # dispatch --------------------------------------------------------------------------------------------
    def handle(
        self, msg: Message, contribute: Callable[[Plan], Contribution] | Mapping[str, Contribution] | None = None
    ) -> Message:
        stage = msg.get("stage")
        if stage == "register":
            return self.register(msg)
        if stage == "join":
            return self.join(msg)
        if stage == "upload":
            if contribute is None:
                raise ValueError("an upload needs the client's contributions")
            return self.upload(msg, contribute)
        if stage == "confirm":
            return self.confirm(msg)
        if stage == "unmask":
            return self.unmask(msg)
        raise ProtocolRefusal(f"unknown stage {stage!r}")

    # trust -----------------------------------------------------------------------------------------------
    def _accept_directory(self, msg: Message) -> None:
        """With a directory key: the request must carry a directory signed by it; its entries become the pinned
        identities (no trust on first use). Without one, `trust` is used as configured."""
        if self.directory is None:
            return
        if "directory" not in msg:
            if self.directory.current is None:
                raise ProtocolRefusal("the server sent no SecAgg directory: peers cannot be verified")
            return
        current = self.directory.accept(get(msg, "directory", bytes), self.client_id, self.identity.public)
        self.trust.pinned, self.trust.tofu = dict(current), False

    def _certify_prekeys(self, first: int, reply: Message) -> None:
        """Certify this client's prekeys for rounds first .. first + PREKEY_LOOKAHEAD (made once per round)."""
        certs = []
        for r in range(first, first + PREKEY_LOOKAHEAD + 1):
            if r not in self.prekeys:
                self.prekeys[r] = new_x25519()
            certs.append(self.identity.cert(r, x25519_public(self.prekeys[r])).to_bytes())
        reply["certs"] = certs

    def _erase_prekeys(self, through: int) -> None:
        for r in [r for r in self.prekeys if r <= through]:
            del self.prekeys[r]

    # register --------------------------------------------------------------------------------------------
    def register(self, msg: Message) -> Message:
        """Join a session: answer with certified prekeys. A new session (a restarted server) drops old instance
        state but keeps `last_round`: its rounds must continue past the last round this client uploaded in, so a
        restart can never make the client mask the same round's input twice."""
        round_ = check_header(msg, "register", None)
        session = get(msg, "session", bytes)
        self._accept_directory(msg)
        if session != self.session:
            self.session, self.instances = session, {}
        reply = header("register", session, round_)
        self._certify_prekeys(round_, reply)
        return reply

    # announce --------------------------------------------------------------------------------------------
    def join(self, msg: Message) -> Message:
        """Announce keys for instances this client has no material for (first round, or after a dropout)."""
        round_ = check_header(msg, "join", self._session())
        reply = header("join", self._session(), round_)
        self._accept_directory(msg)
        instances = get(msg, "instances", list)
        staged = {}
        for key in instances:
            plan = self._accept_plan(msg, key)
            if key in self.instances and self.instances[key].status != "announced":
                raise ProtocolRefusal(f"instance {key} already used its keys: refusing to re-announce")
            staged[key] = self._announce(msg, plan, reply)
        for inst in staged.values():
            self._abandon_older(inst.plan.round)
        self.instances.update(staged)
        reply["instances"] = list(instances)
        self._certify_prekeys(max([inst.plan.round for inst in staged.values()], default=round_) + 1, reply)
        return reply

    def _abandon_older(self, round_: int) -> None:
        """Erase keys announced for rounds before `round_` that were never used: the server has moved on, so
        this client was declared dropped there and those keys may have been rebuilt. They are never used again."""
        for inst in self.instances.values():
            if inst.plan.round < round_ and inst.status == "announced":
                inst.status, inst.mask_private, inst.self_seed, inst.held = "abandoned", None, None, {}
        self._erase_prekeys(round_ - 1)

    def _accept_plan(self, msg: Message, key: str) -> Plan:
        plan = Plan.from_bytes(get(msg, field(key, "plan"), bytes))
        if plan.key != key:
            raise ProtocolRefusal(f"plan for {plan.key} sent as {key}")
        plan.check(self.policy, self._session(), self.client_id)
        if self.require_consistency and not plan.consistency:
            raise ProtocolRefusal(
                f"plan {key} has no consistency check and this company requires it "
                f"(--require-consistency): nothing was announced"
            )
        if plan.round <= self.last_round:
            raise ProtocolRefusal(
                f"plan {key} is for round {plan.round} <= last uploaded round {self.last_round} (replay)"
            )
        known = self.instances.get(key)
        if known is not None and known.plan.digest != plan.digest:
            raise ProtocolRefusal(f"a different plan for instance {key} (plans never change)")
        return plan

    def _announce(self, msg: Message, plan: Plan, reply: Message) -> _Instance:
        key = plan.key
        peers = plan.neighbours(self.client_id)
        certs = {}
        for v in peers:  # a neighbour the server has no prekey for cannot take part: it gets no share
            if field(key, "cert", v) in msg:
                cert = self.trust.accept_cert(Cert.from_bytes(get(msg, field(key, "cert", v), bytes)))
                if cert.client_id != v or cert.round != plan.round:
                    raise ProtocolRefusal(
                        f"prekey of {cert.client_id} for round {cert.round} sent as {v}'s for round {plan.round}"
                    )
                certs[v] = cert
        if len(certs) < plan.threshold:
            raise ProtocolRefusal(f"only {len(certs)} neighbours with keys in {key}; threshold is {plan.threshold}")
        mask_private, self_seed, seal_private = new_x25519(), os.urandom(32), X25519PrivateKey.generate()
        ann = Announcement(
            self.client_id,
            plan.digest,
            x25519_public(mask_private),
            self_seed_commitment(plan.digest, self.client_id, self_seed),
            seal_private.public_key().public_bytes_raw(),
        )
        ann = Announcement(
            ann.client_id,
            ann.plan_digest,
            ann.mask_public,
            ann.seed_commitment,
            ann.seal_public,
            self.identity.sign(ann.signed_bytes()),
        )
        secrets = np.concatenate([shamir.secret_to_elements(mask_private), shamir.secret_to_elements(self_seed)])
        receivers = sorted(certs)
        shares = shamir.split(secrets, [plan.x(v) for v in receivers], plan.threshold)
        for v, share in zip(receivers, shares):
            k = seal_key(seal_private, certs[v].channel_public, plan.digest, self.client_id, v)
            reply[field(key, "share", v)] = seal(
                k, share.astype("<u4").tobytes(), share_ad(plan.digest, self.client_id, v)
            )
        del seal_private  # single use: nothing this client keeps can open the shares it sent
        reply[field(key, "ann")] = ann.to_bytes()
        return _Instance(plan, "announced", mask_private, self_seed)

    # upload ----------------------------------------------------------------------------------------------
    def upload(self, msg: Message, contribute: Callable[[Plan], Contribution] | Mapping[str, Contribution]) -> Message:
        """Mask this round's contributions; announce keys for the next round's instances in the same reply."""
        round_ = check_header(msg, "upload", self._session())
        reply = header("upload", self._session(), round_)
        self._accept_directory(msg)
        instances = get(msg, "instances", list)
        work = []
        for key in instances:
            inst = self.instances.get(key)
            if inst is None:
                raise ProtocolRefusal(
                    f"no keys announced for instance {key}: a new client or one declared dropped "
                    f"must join (announce fresh keys) before it can upload"
                )
            if inst.status != "announced":
                raise ProtocolRefusal(
                    f"instance {key} was already uploaded or abandoned: a masked input is sent "
                    f"once, and keys of a round the server moved past are never used"
                )
            if Plan.from_bytes(get(msg, field(key, "plan"), bytes)).digest != inst.plan.digest:
                raise ProtocolRefusal(f"plan of {key} changed since announcement")
            if inst.plan.round != round_:
                raise ProtocolRefusal(f"instance {key} is not in round {round_}")
            if inst.plan.round <= self.last_round:
                # two instances over overlapping cohorts with the same inputs would give the server two sums
                # whose difference is an individual input: one masked input per round, never a re-run
                raise ProtocolRefusal(
                    f"already uploaded an input in round {self.last_round}: a round is never "
                    f"aggregated twice (re-run a failed block in a later round)"
                )
            work.append((inst, self._collect_peers(msg, inst)))
        next_keys = get(msg, "next", list) if "next" in msg else []
        staged = {}
        for key in next_keys:
            staged[key] = self._announce(msg, self._accept_plan(msg, key), reply)
        # all checks passed; encode every contribution first (bounds can still fail), then mask and commit
        encoded = []
        for inst, _peers in work:
            contribution = contribute(inst.plan) if callable(contribute) else contribute[inst.plan.block]
            encoded.append(inst.plan.quant.encode(contribution.update, contribution.extras))
        for inst, _ in work:
            self._abandon_older(inst.plan.round)
        for (inst, (announced, peer_keys, held)), words in zip(work, encoded):
            reply[field(inst.plan.key, "masked")] = self._mask(inst, words, peer_keys)
            inst.status, inst.announced, inst.held = "uploaded", announced, held
            inst.mask_private = inst.self_seed = None  # single use: erased once the masked input exists
            self.last_round = max(self.last_round, round_)
        self._erase_prekeys(round_)  # the shares of this round are open: nothing can open them again
        self.instances.update(staged)
        reply["instances"] = [inst.plan.key for inst, _ in work]
        reply["next"] = list(next_keys)
        self._certify_prekeys(round_ + 1, reply)
        self._prune(round_)
        return reply

    def _collect_peers(self, msg: Message, inst: _Instance) -> tuple[list[str], dict[str, bytes], dict]:
        plan, key = inst.plan, inst.plan.key
        announced = sorted(get(msg, field(key, "announced"), list))
        announced_set = set(announced)
        if not announced_set <= set(plan.cohort) or self.client_id not in announced_set:
            raise ProtocolRefusal(f"announced set of {key} is not a subset of the cohort containing this client")
        peers = [v for v in plan.neighbours(self.client_id) if v in announced_set]
        if len(peers) < plan.threshold:
            raise ProtocolRefusal(
                f"only {len(peers)} neighbours announced in {key}; threshold {plan.threshold}: "
                f"too few to protect this client's input"
            )
        prekey = self.prekeys.get(plan.round)
        if prekey is None:
            raise ProtocolRefusal(
                f"no prekey of this client for round {plan.round} (erased or never certified): "
                f"the shares of {key} cannot be opened"
            )
        prekey_private = X25519PrivateKey.from_private_bytes(prekey)  # parsed once, used for every peer
        mask_publics, held = {}, {}
        for v in peers:
            ann = Announcement.from_bytes(get(msg, field(key, "ann", v), bytes))
            ann.verify(self.trust.identity(v), v, plan.digest)
            k = seal_key(prekey_private, ann.seal_public, plan.digest, v, self.client_id)
            plain = open_sealed(
                k,
                get(msg, field(key, "share", v), bytes),
                share_ad(plan.digest, v, self.client_id),
                f"share from {v} in {key}",
            )
            words = np.frombuffer(plain, dtype="<u4").astype(np.int64)
            if words.shape != (SHARE_WORDS,) or words.max() >= shamir.PRIME:
                raise ProtocolRefusal(f"malformed share from {v} in {key}")
            mask_publics[v], held[v] = ann.mask_public, words
        return announced, mask_publics, held

    def _mask(self, inst: _Instance, acc: np.ndarray, peer_keys: dict[str, bytes]) -> np.ndarray:
        """y = acc + PRG(b_u) + sum_v sign(u, v) PRG(s_uv) mod 2^bits (acc: the encoded contribution)."""
        if inst.self_seed is None or inst.mask_private is None:
            raise ProtocolRefusal(f"{inst.plan.key}: its masking secrets are erased (one masked input per instance)")
        quant = inst.plan.quant
        expander = MaskExpander(quant.length, quant.dtype)
        expander.add(acc, inst.self_seed, +1)
        private = X25519PrivateKey.from_private_bytes(inst.mask_private)
        for v, public in peer_keys.items():
            seed = pair_seed(private, public, inst.plan.digest, self.client_id, v)
            expander.add(acc, seed, pair_sign(self.client_id, v))
        acc &= quant.dtype.type(quant.modulus_mask)
        return acc

    # confirm (consistency mode) --------------------------------------------------------------------------
    def confirm(self, msg: Message) -> Message:
        round_ = check_header(msg, "confirm", self._session())
        reply = header("confirm", self._session(), round_)
        self._accept_directory(msg)
        signed = {}
        for key in get(msg, "instances", list):
            inst = self._uploaded(key)
            announced, survivors = self._check_view(msg, inst)
            statement = view_statement(inst.plan.digest, announced, survivors)
            if inst.confirmed_view not in (None, statement):
                raise ProtocolRefusal(f"server asks to confirm a second, different view of {key}")
            signed[key] = statement
            reply[field(key, "confirm")] = self.identity.sign(statement)
        for key, statement in signed.items():
            self.instances[key].confirmed_view = statement
            self.instances[key].status = "confirmed"
        reply["instances"] = list(signed)
        return reply

    def _uploaded(self, key: str) -> _Instance:
        inst = self.instances.get(key)
        if inst is None or inst.status == "announced":
            raise ProtocolRefusal(f"instance {key} was not uploaded by this client")
        return inst

    def _check_view(self, msg: Message, inst: _Instance) -> tuple[list[str], list[str]]:
        key, plan = inst.plan.key, inst.plan
        announced = sorted(get(msg, field(key, "announced"), list))
        survivors = sorted(get(msg, field(key, "survivors"), list))
        if announced != inst.announced:
            raise ProtocolRefusal(f"server's announced set for {key} differs from the one this client masked with")
        if len(set(survivors)) != len(survivors) or not set(survivors) <= set(announced):
            raise ProtocolRefusal(f"survivor set of {key} is not a subset of the announced set")
        if self.client_id not in survivors:
            raise ProtocolRefusal(f"server claims {self.client_id} dropped in {key}, but it uploaded: refused")
        if len(survivors) < plan.min_survivors:
            raise ProtocolRefusal(f"{len(survivors)} survivors in {key} < minimum {plan.min_survivors}")
        alive = set(survivors)
        local = [v for v in plan.neighbours(self.client_id) if v in alive]
        if len(local) < plan.threshold:
            raise ProtocolRefusal(
                f"only {len(local)} of this client's neighbours survived in {key}; "
                f"{plan.threshold} are needed to rebuild its self-mask"
            )
        return announced, survivors

    # unmask ----------------------------------------------------------------------------------------------
    def unmask(self, msg: Message) -> Message:
        round_ = check_header(msg, "unmask", self._session())
        reply = header("unmask", self._session(), round_)
        self._accept_directory(msg)
        staged = {}
        for key in get(msg, "instances", list):
            inst = self._uploaded(key)
            sub = {k: v for k, v in msg.items() if k.startswith(key + "/")}
            digest = _request_digest(sub)
            if inst.status == "unmasked":
                if digest != inst.unmask_digest:
                    raise ProtocolRefusal(
                        f"second, different unmask request for {key}: refusing to reveal more "
                        f"shares (a peer would get both of its secrets revealed)"
                    )
                if inst.unmask_reply is None:  # kept together with status "unmasked"
                    raise SecAggError(f"{key} is unmasked but its unmask reply was not kept")
                reply.update(inst.unmask_reply)
                continue
            announced, survivors = self._check_view(msg, inst)
            statement = view_statement(inst.plan.digest, announced, survivors)
            if inst.plan.consistency:
                if inst.confirmed_view not in (None, statement):
                    raise ProtocolRefusal(f"{key}: unmask view differs from the one this client confirmed")
                self._check_confirmations(msg, inst, survivors, statement)
            part = self._reveal(inst, survivors, statement)
            staged[key] = (digest, part)
        for key, (digest, part) in staged.items():
            inst = self.instances[key]
            inst.status, inst.unmask_digest, inst.unmask_reply = "unmasked", digest, part
            inst.held = {}
            reply.update(part)
        reply["instances"] = get(msg, "instances", list)
        return reply

    def _check_confirmations(self, msg: Message, inst: _Instance, survivors: list[str], statement: bytes) -> None:
        key = inst.plan.key
        signers = get(msg, field(key, "signers"), list)
        signatures = get(msg, field(key, "signatures"), list)
        if len(signers) != len(signatures) or len(set(signers)) != len(signers):
            raise ProtocolRefusal(f"malformed confirmation list for {key}")
        valid = 0
        for signer, sig in zip(signers, signatures):
            if signer not in survivors:
                raise ProtocolRefusal(f"{signer} confirmed {key} but is not a survivor")
            verify_signature(self.trust.identity(signer), bytes(sig), statement, f"confirmation by {signer}")
            valid += 1
        if valid < inst.plan.confirm_threshold:
            raise ProtocolRefusal(
                f"{valid} confirmations of the survivor view of {key} < "
                f"{inst.plan.confirm_threshold}: the server may be showing different views"
            )

    def _reveal(self, inst: _Instance, survivors: list[str], statement: bytes) -> Message:
        key, alive = inst.plan.key, set(survivors)
        peers, kinds, rows = [], [], []
        for v in sorted(inst.held):
            peers.append(v)
            if v in alive:
                kinds.append("b")
                rows.append(inst.held[v][shamir.WORDS_PER_SECRET :])
            else:
                kinds.append("e")
                rows.append(inst.held[v][: shamir.WORDS_PER_SECRET])
        shares = np.asarray(rows, dtype=np.uint32).reshape(len(rows), shamir.WORDS_PER_SECRET)
        return {
            field(key, "peers"): peers,
            field(key, "kinds"): kinds,
            field(key, "shares"): shares,
            field(key, "view"): self.identity.sign(statement),
        }

    # state -----------------------------------------------------------------------------------------------
    def _session(self) -> bytes:
        if self.session is None:
            raise ProtocolRefusal("client is not registered in a session yet")
        return self.session

    def _prune(self, current_round: int) -> None:
        for key in [k for k, inst in self.instances.items() if inst.plan.round < current_round - 2]:
            del self.instances[key]

    def export_state(self) -> bytes:
        """Everything the client needs between messages (for a ClientApp's Context), as JSON bytes."""

        def enc(b: bytes | None):
            return None if b is None else base64.b64encode(b).decode()

        insts = {}
        for key, inst in self.instances.items():
            insts[key] = {
                "plan": enc(inst.plan.to_bytes()),
                "status": inst.status,
                "mask_private": enc(inst.mask_private),
                "self_seed": enc(inst.self_seed),
                "announced": inst.announced,
                "held": {v: w.tolist() for v, w in inst.held.items()},
                "confirmed_view": enc(inst.confirmed_view),
                "unmask_digest": enc(inst.unmask_digest),
                "unmask_reply": None if inst.unmask_reply is None else _encode_message(inst.unmask_reply),
            }
        return json.dumps(
            {
                "v": 2,
                "client_id": self.client_id,
                "identity": self.identity.to_dict(),
                "policy": vars(self.policy),
                "trust": self.trust.to_dict(),
                "session": enc(self.session),
                "instances": insts,
                "last_round": self.last_round,
                "prekeys": {str(r): k.hex() for r, k in self.prekeys.items()},
                "directory": None if self.directory is None else self.directory.to_dict(),
                "require_consistency": self.require_consistency,
            }
        ).encode()

    @staticmethod
    def from_state(data: bytes) -> SecAggClient:
        d = json.loads(data)

        def dec(s: str | None):
            return None if s is None else base64.b64decode(s)

        if d.get("v") != 2:
            raise ProtocolRefusal("client state of an older protocol version: start a new run")
        client = SecAggClient(
            d["client_id"],
            Identity.from_dict(d["identity"]),
            policy=Policy(**d["policy"]),
            trust=TrustStore.from_dict(d["trust"]),
            directory=None if d["directory"] is None else DirectoryView.from_dict(d["directory"]),
            require_consistency=bool(d["require_consistency"]),
        )
        client.prekeys = {int(r): bytes.fromhex(k) for r, k in d["prekeys"].items()}
        client.session = dec(d["session"])
        client.last_round = int(d["last_round"])
        for key, s in d["instances"].items():
            client.instances[key] = _Instance(
                Plan.from_bytes(dec(s["plan"])),
                s["status"],
                dec(s["mask_private"]),
                dec(s["self_seed"]),
                s["announced"],
                {v: np.asarray(w, dtype=np.int64) for v, w in s["held"].items()},
                dec(s["confirmed_view"]),
                dec(s["unmask_digest"]),
                None if s["unmask_reply"] is None else _decode_message(s["unmask_reply"]),
            )
        return client


def _encode_message(msg: Message) -> dict:
    out = {}
    for k, v in msg.items():
        if isinstance(v, np.ndarray):
            out[k] = {"a": v.tolist(), "dtype": str(v.dtype)}
        elif isinstance(v, bytes):
            out[k] = {"b": base64.b64encode(v).decode()}
        else:
            out[k] = {"v": v}
    return out


def _decode_message(d: dict) -> Message:
    out: Message = {}
    for k, v in d.items():
        if "a" in v:
            out[k] = np.asarray(v["a"], dtype=v["dtype"])
        elif "b" in v:
            out[k] = base64.b64decode(v["b"])
        else:
            out[k] = v["v"]
    return out
