"""#14 low: private key and secret files are written 0600 whatever was there before, and never through a link.

The operator's CA and server keys (`create_server_tls`), a company's node key (`create_node_key`, behind
`dbclient keys init`) and the registry tokens (`write_secret`, behind `dbserver init`) all go through one writer.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from dblocks.client.nodekey import create_node_key
from dblocks.server.ops.deployment import write_secret
from dblocks.server.ops.tls import create_server_tls


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def loose_file(p: Path, text: str = "old\n") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(0o644)
    return p


def test_key_files_rewritten_over_a_0644_file_become_0600(tmp_path):
    """#14 low: on main, `server.key` and `secrets/service.token` pre-created 0644 kept mode 0644 after the new key
    or token was written into them (O_TRUNC keeps an existing file's mode)."""
    tls_dir = tmp_path / "tls"
    key = loose_file(tls_dir / "server.key")
    tls = create_server_tls(tls_dir, ["localhost"])
    assert mode(tls.key) == 0o600, oct(mode(tls.key))
    assert mode(tls_dir / "ca.key") == 0o600
    serialization.load_pem_private_key(key.read_bytes(), password=None)  # the new key really is in the file
    token = loose_file(tmp_path / "secrets" / "service.token")
    write_secret(token, "s3cret")
    assert mode(token) == 0o600, oct(mode(token))
    assert token.read_text() == "s3cret\n"
    assert not [p.name for p in token.parent.iterdir() if p.name != "service.token"]  # no temporary file left


def test_key_files_refuse_a_symlink_at_the_key_path(tmp_path):
    """#14 low: on main, a symlink at `tls/server.key` (and at `secrets/admin.token`) was followed: the server's
    private key (the token) landed in the 0644 file the link pointed at."""
    outside = loose_file(tmp_path / "elsewhere" / "readable.txt", "not a key\n")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    (tls_dir / "server.key").symlink_to(outside)
    with pytest.raises(OSError, match="symbolic link"):
        create_server_tls(tls_dir, ["localhost"])
    assert outside.read_text() == "not a key\n" and mode(outside) == 0o644
    secret = tmp_path / "secrets" / "admin.token"
    secret.parent.mkdir()
    secret.symlink_to(outside)
    with pytest.raises(OSError, match="symbolic link"):
        write_secret(secret, "admin-token")
    assert outside.read_text() == "not a key\n"


def test_key_files_node_key_is_not_written_through_a_dangling_link(tmp_path):
    """#14 low: on main, `create_node_key` at a dangling symlink (path.exists() is False) created the link's target,
    putting the company's node key wherever the link pointed."""
    target = tmp_path / "shared-dir" / "stolen.key"
    target.parent.mkdir()
    link = tmp_path / "company" / "node.key"
    link.parent.mkdir()
    link.symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        create_node_key(link)
    assert not target.exists()
    priv, pub = create_node_key(tmp_path / "company" / "real.key")
    assert mode(priv) == 0o600 and pub.read_text().startswith("ecdsa-sha2-nistp384 ")


def test_key_files_new_ca_replaces_an_orphaned_ca_key(tmp_path):
    """#14 low: on main, with `ca.pem` gone but a 0644 `ca.key` left over, `create_server_tls` made a new CA yet kept
    the old key file (mode 0644, and not the key of the new ca.pem). Now the new CA's key replaces it, 0600."""
    from cryptography import x509

    tls_dir = tmp_path / "tls"
    tls = create_server_tls(tls_dir, ["localhost"])
    tls.ca.unlink()
    (tls_dir / "ca.key").chmod(0o644)
    tls = create_server_tls(tls_dir, ["localhost"])
    ca_key = serialization.load_pem_private_key((tls_dir / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    assert ca_key.public_key().public_numbers() == ca_cert.public_key().public_numbers()
    assert mode(tls_dir / "ca.key") == 0o600
