"""Keys, certificates, signatures and the derivations of the protocol.

Long-term, per client (never secret-shared, never revealed):
- identity key: Ed25519. Its public key is the client's identity; it is pinned by every party (given by a
  directory such as the registry, or trust-on-first-use) and signs everything a client says about itself.
- channel key: X25519, certified by the identity key with an epoch number (`Cert`). The pairwise channel key
  K_uv = HKDF-SHA256(X25519(c_u, C_v), info = tag || id_low || id_high) encrypts the Shamir shares one client
  sends another through the server (ChaCha20-Poly1305, random 96-bit nonce, associated data binding the plan
  digest, sender and receiver). Rotating it = a new Cert with a larger epoch.

Single-use, per protocol instance (one (session, round, block) cohort):
- masking key: an ephemeral X25519 pair (e_u, E_u); E_u is announced, signed, one instance ahead. The pairwise
  mask seed is s_uv = HKDF-SHA256(X25519(e_u, E_v), salt = plan digest, info = tag || id_low || id_high).
- self-mask seed b_u: 32 random bytes, committed by SHA-256(tag || plan digest || id || b_u) in the announcement.
Shares of e_u and b_u go to u's neighbours; when u drops, e_u is rebuilt, which exposes u's masks of that one
instance only (see docs/secure-aggregation.md for why the long-term key must never be the one that is shared).
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
    except (InvalidSignature, ValueError) as err:
        raise ProtocolRefusal(f"bad signature on {what}") from err


@dataclass(frozen=True)
class Cert:
    """A client's channel public key, signed by its identity key, with an epoch that rotation increases."""

    client_id: str
    identity_public: bytes
    channel_public: bytes
    epoch: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        return encode_fields(b"dblocks-secagg/cert/v1", self.client_id, self.identity_public,
                             self.channel_public, self.epoch)

    def to_bytes(self) -> bytes:
        return encode_fields(self.client_id, self.identity_public, self.channel_public, self.epoch, self.signature)

    @staticmethod
    def from_bytes(data: bytes) -> "Cert":
        parts = decode_fields(data, 5)
        return Cert(parts[0].decode(), parts[1], parts[2], int.from_bytes(parts[3], "big", signed=True), parts[4])

    def verify(self) -> None:
        verify_signature(self.identity_public, self.signature, self.signed_bytes(), f"cert of {self.client_id}")


def decode_fields(data: bytes, count: int) -> list[bytes]:
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
    """A client's long-term keys: Ed25519 identity and a certified X25519 channel key."""

    def __init__(self, client_id: str, signing: bytes | None = None, channel: bytes | None = None, epoch: int = 0):
        self.client_id = check_id(client_id)
        self._signing = Ed25519PrivateKey.from_private_bytes(signing) if signing else Ed25519PrivateKey.generate()
        self.channel_private = channel or new_x25519()
        self.epoch = epoch

    @property
    def public(self) -> bytes:
        return self._signing.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def cert(self) -> Cert:
        unsigned = Cert(self.client_id, self.public, x25519_public(self.channel_private), self.epoch, b"")
        return Cert(unsigned.client_id, unsigned.identity_public, unsigned.channel_public, unsigned.epoch,
                    self.sign(unsigned.signed_bytes()))

    def rotate_channel_key(self) -> Cert:
        """A fresh channel key with epoch + 1; peers accept it (same identity, larger epoch)."""
        self.channel_private = new_x25519()
        self.epoch += 1
        return self.cert()

    def to_dict(self) -> dict:
        return {"client_id": self.client_id, "signing": self._signing.private_bytes_raw().hex(),
                "channel": self.channel_private.hex(), "epoch": self.epoch}

    @staticmethod
    def from_dict(d: dict) -> "Identity":
        return Identity(d["client_id"], bytes.fromhex(d["signing"]), bytes.fromhex(d["channel"]), int(d["epoch"]))


@dataclass
class TrustStore:
    """Pinned identity keys. `pinned` comes from a directory (registry enrolment) and is authoritative; with
    `tofu=True` an unknown id is pinned at first sight (then a server that substitutes keys at first contact
    is not detected: see the threat model). Also keeps the newest valid cert per client (epoch never goes back)."""

    pinned: dict[str, bytes] = field(default_factory=dict)
    tofu: bool = True
    certs: dict[str, Cert] = field(default_factory=dict)

    def accept_cert(self, cert: Cert) -> Cert:
        """Verify and remember `cert`; returns the newest cert of that client. Raises ProtocolRefusal."""
        check_id(cert.client_id)
        known = self.certs.get(cert.client_id)
        if known is not None and cert == known:
            return known  # already verified
        pinned = self.pinned.get(cert.client_id)
        if pinned is None:
            if not self.tofu:
                raise ProtocolRefusal(f"{cert.client_id} is not in the directory of pinned identities")
            self.pinned[cert.client_id] = cert.identity_public
        elif pinned != cert.identity_public:
            raise ProtocolRefusal(f"identity key of {cert.client_id} differs from the pinned one")
        cert.verify()
        if known is not None and cert.epoch < known.epoch:
            raise ProtocolRefusal(f"cert of {cert.client_id} has epoch {cert.epoch} < known {known.epoch} (replay)")
        if known is None or cert.epoch > known.epoch:
            self.certs[cert.client_id] = cert
        elif cert.channel_public != known.channel_public:
            raise ProtocolRefusal(f"two different channel keys of {cert.client_id} with epoch {cert.epoch}")
        return self.certs[cert.client_id]

    def cert(self, client_id: str) -> Cert:
        try:
            return self.certs[client_id]
        except KeyError:
            raise ProtocolRefusal(f"no certified channel key for {client_id}") from None

    def identity(self, client_id: str) -> bytes:
        try:
            return self.pinned[client_id]
        except KeyError:
            raise ProtocolRefusal(f"no pinned identity for {client_id}") from None

    def to_dict(self) -> dict:
        return {"pinned": {k: v.hex() for k, v in self.pinned.items()}, "tofu": self.tofu,
                "certs": {k: c.to_bytes().hex() for k, c in self.certs.items()}}

    @staticmethod
    def from_dict(d: dict) -> "TrustStore":
        return TrustStore({k: bytes.fromhex(v) for k, v in d["pinned"].items()}, bool(d["tofu"]),
                          {k: Cert.from_bytes(bytes.fromhex(v)) for k, v in d["certs"].items()})


def _ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def channel_key(my_channel_private: bytes | X25519PrivateKey, peer_channel_public: bytes, me: str, peer: str) -> bytes:
    low, high = _ordered(me, peer)
    return hkdf(x25519(my_channel_private, peer_channel_public), b"",
                encode_fields(b"dblocks-secagg/channel/v1", low, high))


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


def pair_seed(my_mask_private: bytes | X25519PrivateKey, peer_mask_public: bytes, plan_digest: bytes, me: str, peer: str) -> bytes:
    """s_uv, the 256-bit seed of the pairwise mask between `me` and `peer` in one instance (symmetric)."""
    low, high = _ordered(me, peer)
    return hkdf(x25519(my_mask_private, peer_mask_public), plan_digest,
                encode_fields(b"dblocks-secagg/pair-mask/v1", low, high))


def pair_sign(me: str, peer: str) -> int:
    """+1 if `me` adds the pairwise mask with `peer`, -1 if it subtracts it (the smaller id adds)."""
    return 1 if me < peer else -1


def self_seed_commitment(plan_digest: bytes, client_id: str, seed: bytes) -> bytes:
    return hashlib.sha256(encode_fields(b"dblocks-secagg/self-seed/v1", plan_digest, client_id, seed)).digest()


@dataclass(frozen=True)
class Announcement:
    """What a client publishes for one instance: its masking public key and self-seed commitment, signed."""

    client_id: str
    plan_digest: bytes
    mask_public: bytes
    seed_commitment: bytes
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return encode_fields(b"dblocks-secagg/announce/v1", self.client_id, self.plan_digest, self.mask_public,
                             self.seed_commitment)

    def to_bytes(self) -> bytes:
        return encode_fields(self.client_id, self.plan_digest, self.mask_public, self.seed_commitment,
                             self.signature)

    @staticmethod
    def from_bytes(data: bytes) -> "Announcement":
        p = decode_fields(data, 5)
        return Announcement(p[0].decode(), p[1], p[2], p[3], p[4])

    def verify(self, identity_public: bytes, client_id: str, plan_digest: bytes) -> None:
        if self.client_id != client_id or self.plan_digest != plan_digest:
            raise ProtocolRefusal(f"announcement of {self.client_id} is for another client or plan (replay?)")
        verify_signature(identity_public, self.signature, self.signed_bytes(), f"announcement of {client_id}")


def view_statement(plan_digest: bytes, announced: list[str], survivors: list[str]) -> bytes:
    """What a client signs about an instance's outcome: the announced set A and the survivor set S."""
    return encode_fields(b"dblocks-secagg/view/v1", plan_digest, ",".join(sorted(announced)),
                         ",".join(sorted(survivors)))
