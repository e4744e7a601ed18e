"""The operator's certificates (the `cryptography` package).

A self-signed CA (ECDSA P-256) and a server certificate it signs for the SuperLink's host names; companies
get only `ca.pem` to verify the server. Adding a company never touches certificates: companies authenticate
with their own node key (`dblocks.client.nodekey`), which the operator approves.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from dblocks.shared.privatefile import write_private


@dataclass(frozen=True)
class ServerTLS:
    ca: Path
    cert: Path
    key: Path

    def exists(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()


# the private keys CertificateBuilder.sign takes (of those `load_pem_private_key` may return)
_SIGNING_KEYS = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    dsa.DSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dblocks"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def create_server_tls(directory: str | Path, hosts: list[str], days: int = 825) -> ServerTLS:
    """Server certificate for `hosts` (DNS names or IP addresses) under `directory`, signed by the CA there
    (ca.key + ca.pem), which is created only if it does not exist yet: reissuing the server certificate (new
    host names) keeps the CA, so the companies' copies of ca.pem stay valid."""
    d = Path(directory)
    tls = ServerTLS(d / "ca.pem", d / "server.pem", d / "server.key")
    now = dt.datetime.now(dt.UTC)
    reuse_ca = (d / "ca.key").exists() and tls.ca.exists()
    if reuse_ca:
        ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
        if not isinstance(ca_key, _SIGNING_KEYS):  # `_new_ca` makes a P-256 key; any key that signs X.509 does
            raise ValueError(f"{d / 'ca.key'} holds a {type(ca_key).__name__}, which cannot sign certificates")
        ca_cert = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    else:
        ca_key, ca_cert = _new_ca(now)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    d.mkdir(parents=True, exist_ok=True)
    if not reuse_ca:  # a new CA: its key goes with the new ca.pem (an orphaned old ca.key is replaced)
        write_private(
            d / "ca.key",
            ca_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(
        tls.key,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return tls


def _new_ca(now: dt.datetime):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("dblocks CA"))
        .issuer_name(_name("dblocks CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert
