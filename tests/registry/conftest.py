"""Fixtures of the registry tests: the app on SQLite and on PostgreSQL, a token per role, clients, blocks.

PostgreSQL comes from Debian's `postgresql` package as a throwaway cluster started once per test session;
without it the PostgreSQL half of the suite is skipped with a message saying so."""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from regtools import settings_for  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from throwaway_pg import ThrowawayPostgres, postgres_bin_dir  # noqa: E402

from dblocks.server.registry.app import create_app  # noqa: E402
from dblocks.server.registry.auth import issue_token  # noqa: E402
from dblocks.server.registry.config import RegistrySettings  # noqa: E402
from dblocks.server.registry.models import ROLES  # noqa: E402
from dblocks.shared.registry_client import RegistryClient  # noqa: E402

PG_MISSING = "PostgreSQL is not installed: `apt-get install postgresql` (CI: add `postgresql` to deploy/sysdeps.sh)"


@pytest.fixture(scope="session")
def postgres():
    if postgres_bin_dir() is None:
        pytest.skip(PG_MISSING)
    pg = ThrowawayPostgres().start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path) -> RegistrySettings:
    return settings_for(request.param, request, tmp_path)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    app.state.registry.db.dispose()


@pytest.fixture
def tokens(app) -> dict[str, str]:
    """role -> secret, one token per role (named after the role)."""
    out = {}
    with app.state.registry.db.writer() as s:
        for role in ROLES:
            out[role] = issue_token(s, name=role, role=role, created_by="tests")[1]
    return out


@pytest.fixture
def http(app) -> TestClient:
    return TestClient(app)


@pytest.fixture
def clients(app, tokens) -> dict[str, RegistryClient]:
    """role -> RegistryClient talking to the in-process app (real app, real database)."""
    return {role: RegistryClient("http://testserver", tok, http=TestClient(app)) for role, tok in tokens.items()}


@pytest.fixture
def service(clients) -> RegistryClient:
    return clients["service"]
