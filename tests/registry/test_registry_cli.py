"""`dbserver registry` starts with no configuration at all; `dbserver tokens create` makes working tokens."""

from __future__ import annotations

import os
import re
import subprocess

import httpx
from regproc import VENV_BIN, ServerProcess

from dblocks.shared.procs import free_port


def clean_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBLOCKS_")}
    env["HOME"] = str(home)
    return env


def test_zero_config_serve_and_tokens(tmp_path):
    env = clean_env(tmp_path)
    port = free_port()
    server = ServerProcess(
        [str(VENV_BIN / "dbserver"), "registry", "--port", str(port)], env, port, tmp_path / "server.log"
    ).start()
    try:
        out = server.output()
        admin = re.search(r"^\s+(dbk_\S+)\s*$", out, re.M).group(1)
        assert (tmp_path / ".dblocks" / "registry" / "registry.db").exists()
        h = {"Authorization": f"Bearer {admin}"}
        assert httpx.get(f"{server.url}/api/whoami", headers=h).json()["role"] == "admin"
        # a token made by the CLI while the server runs works at once
        made = subprocess.run(
            [str(VENV_BIN / "dbserver"), "tokens", "create", "--role", "operator", "--name", "alice"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = made.stdout.strip()
        assert token.startswith("dbk_") and "shown only now" in made.stderr
        assert httpx.get(f"{server.url}/api/whoami", headers={"Authorization": f"Bearer {token}"}).json() == {
            "token_id": 2,
            "name": "alice",
            "role": "operator",
        }
        assert token not in (tmp_path / ".dblocks" / "registry" / "registry.db").read_bytes().decode("latin-1"), (
            "token stored in clear"
        )
        bad = subprocess.run(
            [str(VENV_BIN / "dbserver"), "tokens", "create", "--role", "root"], env=env, capture_output=True, text=True
        )
        assert bad.returncode != 0 and "unknown role 'root'" in bad.stderr
        listed = subprocess.run(
            [str(VENV_BIN / "dbserver"), "tokens", "list"], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert "bootstrap-admin" in listed and "alice" in listed and token not in listed
    finally:
        server.kill()


def test_admin_token_is_minted_only_on_a_fresh_install(tmp_path):
    from dblocks.server.registry.app import open_registry
    from dblocks.server.registry.cli import ensure_admin_token
    from dblocks.server.registry.config import RegistrySettings

    reg = open_registry(RegistrySettings.in_directory(tmp_path))
    first = ensure_admin_token(reg)
    assert first and first.startswith("dbk_")
    assert ensure_admin_token(reg) is None  # a restart mints no second admin token
    reg.db.dispose()
