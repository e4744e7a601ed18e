"""#20 on the registry: a failed run says so on its page, a revoked token is refused at once, `--home` is the server
home on every `dbserver` command."""

from __future__ import annotations

import time

from regtools import new_run
from sqlalchemy import select
from typer.testing import CliRunner


def test_failed_run_is_visible_on_its_page_and_a_resume_shows(service, http, tokens):
    h = {"Authorization": f"Bearer {tokens['viewer']}"}
    rid = new_run(service)["id"]
    service.set_status(rid, "running")
    assert "run-failed" not in http.get(f"/ui/runs/{rid}/header", headers=h).text
    service.set_status(rid, "failed", "ValueError: the SuperLink went away")
    page = http.get(f"/runs/{rid}", headers=h).text
    assert 'id="run-failed"' in page and "This run failed" in page and "the SuperLink went away" in page
    assert f"dbserver run new --run-id {rid}" in page and "<script>" not in page.split('id="run-failed"')[1][:600]
    service.set_status(rid, "running")  # `dbserver run new --run-id` resumed it
    time.sleep(0.3)  # the header fragment is cached for at most a quarter second
    header = http.get(f"/ui/runs/{rid}/header", headers=h).text
    assert 'id="run-resumed"' in header and "after 1 failure" in header and "the SuperLink went away" in header
    assert "run-failed" not in header


def test_revoked_token_is_refused_at_once_even_when_revoked_by_another_process(app, http, tokens):
    from dblocks.server.registry.models import ApiToken, utcnow
    from dblocks.server.registry.revocation import announce_revocation

    reg = app.state.registry
    h = {"Authorization": f"Bearer {tokens['researcher']}"}
    assert http.get("/api/whoami", headers=h).status_code == 200  # now cached in this process
    # `dbserver tokens revoke` works on the database from another process, then announces it
    with reg.db.writer() as s:
        s.execute(select(ApiToken).where(ApiToken.name == "researcher")).scalar_one().revoked_at = utcnow()
    announce_revocation(reg.settings.data_dir)
    assert http.get("/api/whoami", headers=h).status_code == 401
    assert http.get("/api/whoami", headers={"Authorization": f"Bearer {tokens['viewer']}"}).status_code == 200


def test_tokens_home_is_the_server_home(tmp_path, monkeypatch):
    """`tokens create --home <server home>` uses the registry of that server home (beside it), never a second one;
    a home with no registry is refused in one line; a revocation is announced to the running registries."""
    from dblocks.server.registry.app import open_registry
    from dblocks.server.registry.cli import tokens_app
    from dblocks.server.registry.config import RegistrySettings
    from dblocks.server.registry.revocation import marker_path

    monkeypatch.setenv("DBLOCKS_HOME", str(tmp_path / "elsewhere"))  # restored after the test (the CLI writes it)
    monkeypatch.setenv("DBLOCKS_DATABASE_URL", "")
    base = tmp_path / "base"
    (base / "server").mkdir(parents=True)
    open_registry(RegistrySettings.in_directory(base / "registry")).db.dispose()  # as `dbserver init` leaves it
    runner = CliRunner()
    made = runner.invoke(tokens_app, ["create", "--role", "viewer", "--name", "v", "--home", str(base / "server")])
    assert made.exit_code == 0 and made.stdout.startswith("dbk_"), made.output
    listed = runner.invoke(tokens_app, ["list", "--home", str(base / "server")])
    assert " v\n" in listed.stdout and not (base / "server" / "registry").exists()
    assert runner.invoke(tokens_app, ["revoke", "1", "--home", str(base / "server")]).exit_code == 0
    assert marker_path(base / "registry").exists()
    wrong = runner.invoke(tokens_app, ["list", "--home", str(base)])  # the old meaning (a base directory)
    assert wrong.exit_code == 2 and "no registry database" in wrong.output and "dbk_" not in wrong.output
    assert not (tmp_path / "registry").exists()
