"""`dbserver init`: certificates, tokens and server.toml; the CA is never replaced."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from dblocks.server.ops.deployment import ServerConfig
from dblocks.server.ops.launcher import ServerHome
from dblocks.server.ops.provision import admin_token_path, init_server, load_config, service_token_path

BIN = Path(sys.executable).parent


def sans(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    }


def test_init_then_reinit_keeps_the_ca_and_the_tokens(tmp_path):
    home = ServerHome(tmp_path / "server")
    first = init_server(home, ["fl.example.org"])
    ca_before = home.tls.ca.read_bytes()
    assert first.admin_token and first.admin_token.startswith("dbk_")
    assert sans(home.tls.cert) == {"fl.example.org", "localhost", "127.0.0.1"}
    for secret in (admin_token_path(home), service_token_path(home), home.root / "tls" / "ca.key", home.tls.key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    cfg = load_config(home)
    assert cfg.superlink.address == "127.0.0.1:9091" and cfg.gateway.address == "0.0.0.0:9092"
    assert cfg.registry.address == "127.0.0.1:8700" and cfg.hosts == ["fl.example.org"]
    assert 'address = "127.0.0.1:9091"' in (home.flwr_home / "config.toml").read_text()

    # a new host name: new server certificate signed by the same CA; tokens kept
    second = init_server(home, ["fl.example.org", "203.0.113.7"])
    assert home.tls.ca.read_bytes() == ca_before
    assert "203.0.113.7" in sans(home.tls.cert)
    ca = x509.load_pem_x509_certificate(ca_before)
    x509.load_pem_x509_certificate(home.tls.cert.read_bytes()).verify_directly_issued_by(ca)
    assert second.admin_token is None and admin_token_path(home).read_text().strip() == first.admin_token
    rotated = init_server(home, ["fl.example.org"], rotate_tokens=True)
    assert rotated.admin_token not in (None, first.admin_token)


def test_the_registry_accepts_the_tokens_init_wrote(tmp_path):
    from fastapi.testclient import TestClient

    from dblocks.server.registry.app import create_app
    from dblocks.server.registry.config import RegistrySettings

    home = ServerHome(tmp_path / "server")
    init_server(home, ["fl.example.org"])
    app = create_app(RegistrySettings.from_env({"DBLOCKS_HOME": str(tmp_path)}))
    with TestClient(app) as c:
        for path, role in ((admin_token_path(home), "admin"), (service_token_path(home), "service")):
            r = c.get("/api/whoami", headers={"Authorization": f"Bearer {path.read_text().strip()}"})
            assert r.status_code == 200 and r.json()["role"] == role


def test_server_toml_refuses_a_public_superlink_and_unknown_settings(tmp_path):
    p = tmp_path / "server.toml"
    p.write_text('hosts = ["a"]\n[superlink]\nhost = "0.0.0.0"\nport = 9091\n')
    with pytest.raises(ValueError, match="must stay on loopback"):
        ServerConfig.load(p)
    p.write_text('hosts = ["a"]\nregistry_port = 1\n')
    with pytest.raises(ValueError, match="unknown settings"):
        ServerConfig.load(p)
    p.write_text("hosts = []\n")
    with pytest.raises(ValueError, match="at least one host"):
        ServerConfig.load(p)


def test_dbserver_init_cli_and_its_error_for_a_missing_host(tmp_path):
    env = {"DBLOCKS_HOME": str(tmp_path), "PATH": str(BIN)}
    ok = subprocess.run(
        [str(BIN / "dbserver"), "init", "--host", "fl.example.org"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and "dbk_" in ok.stdout and (tmp_path / "server" / "server.toml").exists(), ok.stderr
    bad = subprocess.run([str(BIN / "dbserver"), "init"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--host" in bad.stdout + bad.stderr
