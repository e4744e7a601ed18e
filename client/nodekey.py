"""A company's node key (the `cryptography` package): ECDSA P-384 private key (OpenSSH PEM) + OpenSSH public
key, the format Flower's SuperNode authentication expects (`--auth-supernode-private-key`,
`flwr supernode register KEY.pub`). `dbclient keys init` writes it; the operator approves the public key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dblocks.shared.privatefile import write_private


def create_node_key(path: str | Path) -> tuple[Path, Path]:
    """ECDSA P-384 node key at `path` (OpenSSH private key) and `path`.pub (OpenSSH public key)."""
    priv = Path(path)
    if priv.exists():
        raise FileExistsError(f"{priv} already exists; a node key is never overwritten (it identifies this company)")
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(
        priv,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    pub = priv.with_name(priv.name + ".pub")
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return priv, pub


def public_key_fingerprint(public_key_openssh: str | bytes) -> str:
    """SHA256 fingerprint of an OpenSSH public key line (as `ssh-keygen -l` prints it, hex)."""
    text = public_key_openssh.decode() if isinstance(public_key_openssh, bytes) else public_key_openssh
    key = serialization.load_ssh_public_key(text.strip().encode())
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()
