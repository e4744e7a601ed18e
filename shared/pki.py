"""Certificates and keys (the `cryptography` package).

* A self-signed CA (ECDSA P-256) and a server certificate it signs for the SuperLink's host names; companies
  get only `ca.pem` to verify the server. Adding a company never touches certificates: companies
  authenticate with their own node key, which the operator approves.
* Node keys: ECDSA P-384 private key (OpenSSH PEM) + OpenSSH public key — the format Flower's SuperNode
  authentication expects (`--auth-supernode-private-key`, `flwr supernode register KEY.pub`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ServerTLS:
    ca: Path
    cert: Path
    key: Path

    def exists(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()


class PrivateFileError(OSError):
    """A private key or secret could not be written safely (e.g. its path is a symbolic link)."""


def write_private(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` readable by its owner only (mode 0600), atomically.

    The bytes go to a new file beside `path`, created with mode 0600 from the start (O_CREAT | O_EXCL |
    O_NOFOLLOW, then fchmod 0600 whatever the umask), which then replaces `path` by rename. So an existing file's
    looser mode (say 0644) is never inherited, no reader ever sees a partly written key, and a symbolic link at
    `path` is refused rather than followed into the file it points at."""
    p = Path(path)
    if p.is_symlink():
        raise PrivateFileError(f"{p} is a symbolic link; a private key or secret is never written through a link "
                               "(it could lead to a file others can read): remove the link and run the command again")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dblocks"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def create_server_tls(directory: str | Path, hosts: list[str], days: int = 825) -> ServerTLS:
    """Server certificate for `hosts` (DNS names or IP addresses) under `directory`, signed by the CA there
    (ca.key + ca.pem), which is created only if it does not exist yet: reissuing the server certificate (new
    host names) keeps the CA, so the companies' copies of ca.pem stay valid."""
    d = Path(directory)
    tls = ServerTLS(d / "ca.pem", d / "server.pem", d / "server.key")
    now = dt.datetime.now(dt.timezone.utc)
    reuse_ca = (d / "ca.key").exists() and tls.ca.exists()
    if reuse_ca:
        ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    else:
        ca_key, ca_cert = _new_ca(now)
    key = ec.generate_private_key(ec.SECP256R1())
    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    d.mkdir(parents=True, exist_ok=True)
    if not reuse_ca:  # a new CA: its key goes with the new ca.pem (an orphaned old ca.key is replaced)
        write_private(d / "ca.key", ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(tls.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return tls


def _new_ca(now: dt.datetime):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("dblocks CA")).issuer_name(_name("dblocks CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def create_node_key(path: str | Path) -> tuple[Path, Path]:
    """ECDSA P-384 node key at `path` (OpenSSH private key) and `path`.pub (OpenSSH public key)."""
    priv = Path(path)
    if priv.exists():
        raise FileExistsError(f"{priv} already exists; a node key is never overwritten (it identifies this company)")
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    pub = priv.with_name(priv.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return priv, pub


def public_key_fingerprint(public_key_openssh: str | bytes) -> str:
    """SHA256 fingerprint of an OpenSSH public key line (as `ssh-keygen -l` prints it, hex)."""
    text = public_key_openssh.decode() if isinstance(public_key_openssh, bytes) else public_key_openssh
    key = serialization.load_ssh_public_key(text.strip().encode())
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()
