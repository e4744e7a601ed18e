"""Keys, certificates, signatures and the derivations of the protocol.

Long-term, per client (never secret-shared, never revealed, never used to encrypt):
- identity key: Ed25519, persistent (a 0600 file beside the node key). Its public key is the client's identity;
  it is enrolled with the operator's registry and pinned by every party from a signed directory (see
  `directory.py`), and it signs everything a client says about itself. It only signs: compromising it later
  opens nothing that was sent before.

Short-lived, per client and round (forward secrecy, as the per-round keys of Bell et al.):
- prekey: an X25519 pair (p_v, P_v) for one protocol round r, certified by the identity key (`Cert`, bound to
  r). Shares for v's instances of round r are sealed to P_v; v erases p_v once it has opened them (at its
  upload of round r), or when it moves past round r.

Single-use, per protocol instance (one (session, round, block) cohort):
- seal key: an ephemeral X25519 pair (k_u, K_u); K_u is in u's signed announcement. The share u sends v is
  sealed under K_uv = HKDF-SHA256(X25519(k_u, P_v), salt = plan digest, info = tag || u || v) with
  ChaCha20-Poly1305 (random 96-bit nonce, associated data binding the plan digest, sender and receiver).
  k_u is erased as soon as the shares are sealed, so after round r neither k_u nor p_v exists anywhere and the
  recorded sealed shares of round r cannot be opened, even with both parties' identity keys.
- masking key: an ephemeral X25519 pair (e_u, E_u); E_u is announced, signed, one instance ahead. The pairwise
  mask seed is s_uv = HKDF-SHA256(X25519(e_u, E_v), salt = plan digest, info = tag || id_low || id_high).
- self-mask seed b_u: 32 random bytes, committed by SHA-256(tag || plan digest || id || b_u) in the announcement.
Shares of e_u and b_u go to u's neighbours; when u drops, e_u is rebuilt, which exposes u's masks of that one
instance only (see docs/secure-aggregation.md for why a long-term key must never be the one that is shared).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ProtocolRefusal

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
NONCE_BYTES = 12


def check_id(name: str, what: str = "client id") -> str:
    if not isinstance(name, str) or not ID_PATTERN.match(name):
        raise ValueError(f"{what} {name!r} must be 1-128 characters from [A-Za-z0-9_.:-]")
    return name


def encode_fields(*parts: bytes | str | int) -> bytes:
    """Unambiguous concatenation for signing and key derivation: each part length-prefixed (4 bytes)."""
    out = bytearray()
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        elif isinstance(part, int):
            part = part.to_bytes(8, "big", signed=True)
        out += len(part).to_bytes(4, "big") + part
    return bytes(out)


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def x25519(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as err:  # all-zero output: a low-order public key
        raise ProtocolRefusal(f"key agreement with an invalid public key: {err}") from err


def new_x25519() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def verify_signature(identity_public: bytes, signature: bytes, message: bytes, what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(identity_public).verify(signature, message)
    except (InvalidSignature, ValueError, TypeError) as err:
        raise ProtocolRefusal(f"bad signature on {what}") from err


@dataclass(frozen=True)
class Cert:
    """A client's prekey for one protocol round (X25519 public), signed by its identity key."""

    client_id: str
    identity_public: bytes
    channel_public: bytes
    round: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        return encode_fields(
            b"dblocks-secagg/prekey/v2", self.client_id, self.identity_public, self.channel_public, self.round
        )

    def to_bytes(self) -> bytes:
        return encode_fields(self.client_id, self.identity_public, self.channel_public, self.round, self.signature)

    @staticmethod
    def from_bytes(data: bytes) -> Cert:
        parts = decode_fields(data, 5)
        cert = Cert(decode_id(parts[0]), parts[1], parts[2], int.from_bytes(parts[3], "big", signed=True), parts[4])
        if len(cert.identity_public) != 32 or len(cert.channel_public) != 32 or len(parts[3]) != 8:
            raise ProtocolRefusal(f"malformed cert of {cert.client_id}")
        return cert

    def verify(self) -> None:
        verify_signature(self.identity_public, self.signature, self.signed_bytes(), f"cert of {self.client_id}")


def decode_id(raw: bytes) -> str:
    """A client id from the wire: UTF-8 and matching ID_PATTERN, else ProtocolRefusal (never another error)."""
    try:
        return check_id(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolRefusal(f"malformed client id {raw[:40]!r}") from err


def decode_fields(data: bytes, count: int) -> list[bytes]:
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolRefusal(f"expected encoded bytes, got {type(data).__name__}")
    parts, pos = [], 0
    try:
        for _ in range(count):
            size = int.from_bytes(data[pos : pos + 4], "big")
            if pos + 4 + size > len(data):
                raise ValueError
            parts.append(bytes(data[pos + 4 : pos + 4 + size]))
            pos += 4 + size
    except (ValueError, TypeError) as err:
        raise ProtocolRefusal("malformed encoded message") from err
    if pos != len(data):
        raise ProtocolRefusal("malformed encoded message (trailing bytes)")
    return parts


class Identity:
    """A client's long-term Ed25519 identity key (it only signs; see the module docstring)."""

    def __init__(self, client_id: str, signing: bytes | None = None):
        self.client_id = check_id(client_id)
        self._signing = Ed25519PrivateKey.from_private_bytes(signing) if signing else Ed25519PrivateKey.generate()

    @property
    def public(self) -> bytes:
        return self._signing.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def cert(self, round_: int, channel_public: bytes) -> Cert:
        """Certify `channel_public` as this client's prekey for protocol round `round_`."""
        unsigned = Cert(self.client_id, self.public, channel_public, int(round_), b"")
        return Cert(
            unsigned.client_id,
            unsigned.identity_public,
            unsigned.channel_public,
            unsigned.round,
            self.sign(unsigned.signed_bytes()),
        )

    def signing_bytes(self) -> bytes:
        return self._signing.private_bytes_raw()

    def to_dict(self) -> dict:
        return {"client_id": self.client_id, "signing": self.signing_bytes().hex()}

    @staticmethod
    def from_dict(d: dict) -> Identity:
        return Identity(d["client_id"], bytes.fromhex(d["signing"]))


@dataclass
class TrustStore:
    """Pinned identity keys and the prekey certs seen, per (client, round).

    `pinned` comes from the signed directory (registry enrolment) and is authoritative. `tofu=True` pins an
    unknown id at first sight; that is for in-process tests only: a server that substitutes keys at first
    contact is then not detected (see the threat model). Two different prekeys of one client for one round are
    refused (equivocation)."""

    pinned: dict[str, bytes] = field(default_factory=dict)
    tofu: bool = False
    certs: dict[tuple[str, int], Cert] = field(default_factory=dict)

    def accept_cert(self, cert: Cert) -> Cert:
        """Verify and remember `cert`. Raises ProtocolRefusal."""
        check_id(cert.client_id)
        index = (cert.client_id, cert.round)
        known = self.certs.get(index)
        if known is not None and cert == known:
            return known  # already verified
        pinned = self.pinned.get(cert.client_id)
        if pinned is None:
            if not self.tofu:
                raise ProtocolRefusal(f"{cert.client_id} is not in the directory of pinned identities")
        elif pinned != cert.identity_public:
            raise ProtocolRefusal(f"identity key of {cert.client_id} differs from the pinned one")
        cert.verify()
        if known is not None:
            raise ProtocolRefusal(f"two different prekeys of {cert.client_id} for round {cert.round}")
        self.pinned.setdefault(cert.client_id, cert.identity_public)
        self.certs[index] = cert
        return cert

    def has_cert(self, client_id: str, round_: int) -> bool:
        return (client_id, round_) in self.certs

    def cert(self, client_id: str, round_: int) -> Cert:
        try:
            return self.certs[(client_id, round_)]
        except KeyError:
            raise ProtocolRefusal(f"no prekey of {client_id} for round {round_}") from None

    def forget_before(self, round_: int) -> None:
        for index in [i for i in self.certs if i[1] < round_]:
            del self.certs[index]

    def identity(self, client_id: str) -> bytes:
        try:
            return self.pinned[client_id]
        except KeyError:
            raise ProtocolRefusal(f"no pinned identity for {client_id}") from None

    def to_dict(self) -> dict:
        return {
            "pinned": {k: v.hex() for k, v in self.pinned.items()},
            "tofu": self.tofu,
            "certs": [c.to_bytes().hex() for c in self.certs.values()],
        }

    @staticmethod
    def from_dict(d: dict) -> TrustStore:
        certs = [Cert.from_bytes(bytes.fromhex(v)) for v in d["certs"]]
        return TrustStore(
            {k: bytes.fromhex(v) for k, v in d["pinned"].items()},
            bool(d["tofu"]),
            {(c.client_id, c.round): c for c in certs},
        )


def _ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def seal_key(
    my_private: bytes | X25519PrivateKey, peer_public: bytes, plan_digest: bytes, sender: str, receiver: str
) -> bytes:
    """K_uv for the share `sender` seals to `receiver`: one side holds the sender's per-instance seal key, the other
    the receiver's prekey for the plan's round (directional: K_uv != K_vu)."""
    info = encode_fields(b"dblocks-secagg/seal/v2", sender, receiver)
    return hkdf(x25519(my_private, peer_public), plan_digest, info)


def share_ad(plan_digest: bytes, sender: str, receiver: str) -> bytes:
    return encode_fields(b"dblocks-secagg/share/v1", plan_digest, sender, receiver)


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, blob: bytes, ad: bytes, what: str) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)
    except (InvalidTag, ValueError) as err:
        raise ProtocolRefusal(f"{what} does not authenticate (forged, replayed or misaddressed)") from err


def pair_seed(
    my_mask_private: bytes | X25519PrivateKey, peer_mask_public: bytes, plan_digest: bytes, me: str, peer: str
) -> bytes:
    """s_uv, the 256-bit seed of the pairwise mask between `me` and `peer` in one instance (symmetric)."""
    low, high = _ordered(me, peer)
    return hkdf(
        x25519(my_mask_private, peer_mask_public), plan_digest, encode_fields(b"dblocks-secagg/pair-mask/v1", low, high)
    )


def pair_sign(me: str, peer: str) -> int:
    """+1 if `me` adds the pairwise mask with `peer`, -1 if it subtracts it (the smaller id adds)."""
    return 1 if me < peer else -1


def self_seed_commitment(plan_digest: bytes, client_id: str, seed: bytes) -> bytes:
    return hashlib.sha256(encode_fields(b"dblocks-secagg/self-seed/v1", plan_digest, client_id, seed)).digest()


@dataclass(frozen=True)
class Announcement:
    """What a client publishes for one instance: its masking and seal public keys and its self-seed commitment,
    signed by its identity key."""

    client_id: str
    plan_digest: bytes
    mask_public: bytes
    seed_commitment: bytes
    seal_public: bytes
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return encode_fields(
            b"dblocks-secagg/announce/v2",
            self.client_id,
            self.plan_digest,
            self.mask_public,
            self.seed_commitment,
            self.seal_public,
        )

    def to_bytes(self) -> bytes:
        return encode_fields(
            self.client_id, self.plan_digest, self.mask_public, self.seed_commitment, self.seal_public, self.signature
        )

    @staticmethod
    def from_bytes(data: bytes) -> Announcement:
        p = decode_fields(data, 6)
        return Announcement(decode_id(p[0]), p[1], p[2], p[3], p[4], p[5])

    def verify(self, identity_public: bytes, client_id: str, plan_digest: bytes) -> None:
        if self.client_id != client_id or self.plan_digest != plan_digest:
            raise ProtocolRefusal(f"announcement of {self.client_id} is for another client or plan (replay?)")
        verify_signature(identity_public, self.signature, self.signed_bytes(), f"announcement of {client_id}")


def view_statement(plan_digest: bytes, announced: list[str], survivors: list[str]) -> bytes:
    """What a client signs about an instance's outcome: the announced set A and the survivor set S."""
    return encode_fields(
        b"dblocks-secagg/view/v1", plan_digest, ",".join(sorted(announced)), ",".join(sorted(survivors))
    )
