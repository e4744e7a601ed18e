"""Public keys of nodes and their fingerprints.

A node registers with a public key, PEM (SubjectPublicKeyInfo) or an OpenSSH line (e.g. the EC keys Flower
SuperNodes use). The canonical fingerprint is OpenSSH's: `SHA256:` + unpadded base64 of sha256 over the
key's OpenSSH wire encoding, what `ssh-keygen -lf key.pub` prints. A fingerprint sent along must name the
same key: that form, or lowercase hex of sha256 over either the OpenSSH wire encoding or the DER
SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization


class PublicKeyError(ValueError):
    """A public key that cannot be parsed, or a fingerprint that does not match it."""


def _load(public_key: str):
    text = public_key.strip()
    try:
        if text.startswith("-----BEGIN"):
            return serialization.load_pem_public_key(text.encode())
        return serialization.load_ssh_public_key(text.encode())
    except Exception as e:  # cryptography raises ValueError or UnsupportedAlgorithm
        raise PublicKeyError(f"public_key is neither a PEM public key nor an OpenSSH public key line ({e})") from None


def fingerprints(public_key: str) -> tuple[str, set[str]]:
    """(canonical fingerprint, every accepted spelling of it)."""
    key = _load(public_key)
    try:
        ssh_blob = base64.b64decode(
            key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
        )
    except ValueError as e:
        raise PublicKeyError(f"public_key type cannot be used by nodes ({e})") from None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    canonical = "SHA256:" + base64.b64encode(hashlib.sha256(ssh_blob).digest()).decode().rstrip("=")
    return canonical, {canonical, hashlib.sha256(ssh_blob).hexdigest(), hashlib.sha256(der).hexdigest()}


def canonical_fingerprint(public_key: str, claimed: str | None = None) -> str:
    """The key's canonical fingerprint; PublicKeyError if `claimed` is given and names another key."""
    canonical, accepted = fingerprints(public_key)
    if claimed is not None and claimed.strip() not in accepted and claimed.strip().lower() not in accepted:
        raise PublicKeyError(f"fingerprint {claimed!r} does not match public_key, whose fingerprint is {canonical}")
    return canonical
