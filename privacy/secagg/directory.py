"""The signed directory of enrolled SecAgg identities: how a company learns its peers' keys without trusting
the server that relays them.

Enrolment. A company's SecAgg identity key (Ed25519, persistent, 0600 beside its node key) is created by
`dbclient keys init` / `dbclient join`; its public key goes to the operator with the node key and is recorded
in the registry when the operator approves the node. The node sync of `dbserver start` maps each approved node
to its SuperLink node id (the SecAgg client id) and signs

    Directory = {version, entries: {node id: identity public key}}

with the operator's directory key (Ed25519, created by `dbserver init`, secrets/directory.key, 0600). The
public half, `directory.pub`, is given to companies with ca.pem and pinned at `dbclient join`.

The directory then travels through the server's messages: the server cannot alter it (signature), cannot roll
it back (a client keeps the highest version it has seen), and cannot re-key a company a client has seen once
(an id whose key differs from the one pinned before is refused, across versions and runs: pins persist beside
the identity key). Residual trust: whoever holds the directory key can enrol sybils; see
docs/secure-aggregation.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import ProtocolRefusal
from .keys import check_id, verify_signature

TAG = b"dblocks-secagg/directory/v1\0"


@dataclass(frozen=True)
class Directory:
    version: int
    entries: dict[str, bytes]  # SecAgg client id (SuperLink node id) -> Ed25519 identity public key
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        body = {"version": self.version, "entries": {k: v.hex() for k, v in sorted(self.entries.items())}}
        return TAG + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "version": self.version,
                "entries": {k: v.hex() for k, v in sorted(self.entries.items())},
                "signature": self.signature.hex(),
            },
            sort_keys=True,
        ).encode()

    @staticmethod
    def from_bytes(data: bytes) -> Directory:
        try:
            d = json.loads(bytes(data))
            entries = {check_id(str(k)): bytes.fromhex(v) for k, v in d["entries"].items()}
            if any(len(v) != 32 for v in entries.values()):
                raise ValueError("identity keys are 32 bytes")
            return Directory(int(d["version"]), entries, bytes.fromhex(d["signature"]))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ProtocolRefusal(f"malformed SecAgg directory: {err}") from err

    def verify(self, directory_key: bytes) -> None:
        verify_signature(directory_key, self.signature, self.signed_bytes(), "the SecAgg directory")

    @staticmethod
    def sign(version: int, entries: dict[str, bytes], signing_key: bytes) -> Directory:
        unsigned = Directory(int(version), dict(entries))
        return Directory(
            unsigned.version,
            unsigned.entries,
            Ed25519PrivateKey.from_private_bytes(signing_key).sign(unsigned.signed_bytes()),
        )


@dataclass
class DirectoryView:
    """A client's view of the directory: the pinned directory key, the highest version seen and every pin ever
    seen (`seen`, never changed). `accept` returns the entries a client may trust now."""

    key: bytes
    version: int = -1
    seen: dict[str, bytes] | None = None
    current: dict[str, bytes] | None = None

    def accept(self, blob: bytes, me: str, my_identity: bytes) -> dict[str, bytes]:
        directory = Directory.from_bytes(blob)
        directory.verify(self.key)
        seen = dict(self.seen or {})
        if directory.version < self.version:
            raise ProtocolRefusal(
                f"SecAgg directory version {directory.version} is older than version "
                f"{self.version} seen before (rolled back)"
            )
        if directory.entries.get(me) != my_identity:
            raise ProtocolRefusal(
                f"the SecAgg directory does not list this node ({me}) with its identity key "
                f"{my_identity.hex()[:16]}...: ask the operator to enrol it"
            )
        changed = sorted(k for k, v in directory.entries.items() if k in seen and seen[k] != v)
        if changed:
            raise ProtocolRefusal(f"the SecAgg directory changes the pinned identity of {changed}: key substitution")
        seen.update(directory.entries)
        self.version, self.seen, self.current = directory.version, seen, dict(directory.entries)
        return self.current

    def to_dict(self) -> dict:
        return {
            "key": self.key.hex(),
            "version": self.version,
            "seen": {k: v.hex() for k, v in (self.seen or {}).items()},
            "current": None if self.current is None else {k: v.hex() for k, v in self.current.items()},
        }

    @staticmethod
    def from_dict(d: dict) -> DirectoryView:
        return DirectoryView(
            bytes.fromhex(d["key"]),
            int(d["version"]),
            {k: bytes.fromhex(v) for k, v in d["seen"].items()},
            None if d["current"] is None else {k: bytes.fromhex(v) for k, v in d["current"].items()},
        )


def create_signing_key(path: Path) -> bytes:
    """Create the operator's directory key (0600) if missing; returns its public key (32 bytes)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(Ed25519PrivateKey.generate().private_bytes_raw().hex() + "\n")
    return Ed25519PrivateKey.from_private_bytes(load_signing_key(path)).public_key().public_bytes_raw()


def load_signing_key(path: Path) -> bytes:
    return bytes.fromhex(Path(path).read_text().strip())


def read_public_key(path: Path) -> bytes:
    """A directory or identity public key file: 64 hex characters (the first token of the file)."""
    text = Path(path).read_text().split()
    try:
        key = bytes.fromhex(text[0]) if text else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(f"{path}: expected an Ed25519 public key as 64 hex characters")
    return key
