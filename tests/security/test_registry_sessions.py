"""#14 low: the dashboard's session is protected: login, logout and every cookie-authenticated write need a CSRF
token checked by the server; the session cookie is SameSite=Strict, HttpOnly, and Secure when served over https
(X-Forwarded-Proto counts only when the registry is configured to trust a proxy).

Real app, real SQLite, Starlette's TestClient as the browser (it keeps cookies like one)."""

from __future__ import annotations

import re
import warnings
from dataclasses import replace

import pytest

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from starlette.testclient import TestClient  # noqa: E402

from dblocks.server.registry.app import create_app  # noqa: E402
from dblocks.server.registry.auth import COOKIE_NAME, issue_token  # noqa: E402
from dblocks.server.registry.config import RegistrySettings  # noqa: E402
from dblocks.server.registry.models import ROLES  # noqa: E402


@pytest.fixture(scope="module")
def session_world(tmp_path_factory):
    """The app on a fresh SQLite file, a token per role and a run: (settings, app, tokens, run id)."""
    settings = RegistrySettings.in_directory(tmp_path_factory.mktemp("sessions"))
    app = create_app(settings)
    with app.state.registry.db.writer() as s:
        tokens = {role: issue_token(s, name=role, role=role, created_by="tests")[1] for role in ROLES}
    from dblocks.shared.schedule import NoiseSchedule

    run = TestClient(app).post(
        "/api/runs",
        headers={"Authorization": f"Bearer {tokens['service']}"},
        json={"task": "mnist", "num_blocks": 2, "num_rounds": 3, "schedule": NoiseSchedule(num_blocks=2).to_dict()},
    )
    assert run.status_code == 201, run.text
    yield settings, app, tokens, run.json()["id"]
    app.state.registry.db.dispose()


def browser(app, https: bool = False) -> TestClient:
    return TestClient(app, base_url="https://testserver" if https else "http://testserver", follow_redirects=False)


def hidden(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no hidden field {name!r} in the page"
    return m.group(1)


def set_cookies(response) -> dict[str, str]:
    """name -> the whole Set-Cookie line, for every cookie the response sets."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


def log_in(client: TestClient, token: str):
    """What a person does: open /login, paste the token, press the button."""
    page = client.get("/login")
    assert page.status_code == 200
    fields = {"token": token, "next": "/"}
    if 'name="csrf_token"' in page.text:
        fields["csrf_token"] = hidden(page.text, "csrf_token")
    return client.post("/login", data=fields)


def test_login_without_csrf_token_is_refused(session_world):
    """#14 low: a login post without the form's CSRF nonce (a cross-site form logging the operator into a session of
    the attacker's choosing), or with a nonce from another browser, is refused with 403 and sets no session.
    On main both were answered 303 with the session cookie set."""
    _, app, tokens, _ = session_world
    attacker = browser(app)
    r = attacker.post("/login", data={"token": tokens["viewer"], "next": "/"})
    assert r.status_code == 403, f"login without a CSRF token answered {r.status_code}"
    assert COOKIE_NAME not in set_cookies(r)

    other = browser(app)
    foreign_nonce = hidden(other.get("/login").text, "csrf_token")
    r = attacker.post("/login", data={"token": tokens["viewer"], "next": "/", "csrf_token": foreign_nonce})
    assert r.status_code == 403, f"login with another browser's nonce answered {r.status_code}"
    assert COOKIE_NAME not in set_cookies(r)

    page = attacker.get("/login")
    r = attacker.post("/login", data={"token": tokens["viewer"], "next": "/", "csrf_token": "x" * 43})
    assert r.status_code == 403, "a wrong nonce was accepted"
    nonce = hidden(page.text, "csrf_token")
    r = attacker.post("/login", data={"token": tokens["viewer"], "next": "/", "csrf_token": nonce})
    assert r.status_code == 303 and COOKIE_NAME in set_cookies(r), "the real login form does not log in"


def test_logout_without_csrf_token_is_refused(session_world):
    """#14 low: a logout post carrying the session cookie but not the page's CSRF token is refused with 403 and the
    session survives; the logout button of a page (which carries it) ends the session.
    On main the token-less post was answered 303 and deleted the session cookie."""
    _, app, tokens, _ = session_world
    user = browser(app)
    assert log_in(user, tokens["operator"]).status_code == 303
    r = user.post("/logout")
    assert r.status_code == 403, f"logout without a CSRF token answered {r.status_code}"
    assert COOKIE_NAME not in set_cookies(r), "the token-less logout touched the session cookie"
    assert user.get("/api/whoami").status_code == 200, "the session did not survive"

    page = user.get("/nodes")
    assert page.status_code == 200
    r = user.post("/logout", data={"csrf_token": hidden(page.text, "csrf_token")})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "Max-Age=0" in set_cookies(r)[COOKIE_NAME] or "expires=" in set_cookies(r)[COOKIE_NAME].lower()


def test_dashboard_writes_need_the_session_csrf_token(session_world):
    """#14 low: every cookie-authenticated state-changing request needs the session's CSRF token (sent by htmx from
    the page's hx-headers); a token of another session is refused; Bearer calls need none.
    On main the cookie plus an `HX-Request: true` header (no secret at all) was enough to pause a run."""
    _, app, tokens, run_id = session_world
    user = browser(app)
    assert log_in(user, tokens["operator"]).status_code == 303
    url = f"/ui/runs/{run_id}/control"
    r = user.post(url, data={"num_rounds": "5"}, headers={"HX-Request": "true"})
    assert r.status_code == 403, f"a cookie write without the CSRF token answered {r.status_code}"

    page = user.get(f"/runs/{run_id}").text
    headers = re.search(r"<body[^>]*hx-headers='([^']*)'", page)
    assert headers, "the run page gives htmx no CSRF header"
    token = re.search(r'"X-CSRF-Token": "([0-9a-f]{64})"', headers.group(1)).group(1)

    other = browser(app)
    assert log_in(other, tokens["admin"]).status_code == 303
    other_token = hidden(other.get("/nodes").text, "csrf_token")
    assert other_token != token
    r = user.post(url, data={"num_rounds": "5"}, headers={"HX-Request": "true", "X-CSRF-Token": other_token})
    assert r.status_code == 403, "another session's CSRF token was accepted"

    r = user.post(url, data={"num_rounds": "6"}, headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert r.status_code == 200 and "error" not in r.text, r.text[:300]
    api = browser(app).post(url, data={"num_rounds": "7"}, headers={"Authorization": f"Bearer {tokens['operator']}"})
    assert api.status_code == 200, "a Bearer call was asked for a CSRF token"
    assert TestClient(app).get(f"/api/runs/{run_id}/control").status_code == 401  # no token at all: still 401


def test_session_cookie_secure_over_https(session_world):
    """#14 low: the session cookie (and the login form's cookie) is Secure when the page was served over https and
    not over http, and always HttpOnly with SameSite=Strict. On main it was never Secure."""
    _, app, tokens, _ = session_world
    for https in (True, False):
        client = browser(app, https=https)
        r = log_in(client, tokens["viewer"])
        assert r.status_code == 303
        cookie = set_cookies(r)[COOKIE_NAME]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower(), cookie
        assert ("; secure" in cookie.lower()) == https, f"over {'https' if https else 'http'}: {cookie}"
        login_cookies = set_cookies(client.get("/login"))
        assert all(("; secure" in c.lower()) == https for c in login_cookies.values()), login_cookies


def test_session_cookie_secure_behind_a_trusted_proxy_only(session_world):
    """#14 low: X-Forwarded-Proto: https marks the cookie Secure only when the registry is configured to trust a
    proxy (DBLOCKS_TRUST_PROXY=1); otherwise anyone could send the header and it is ignored.
    On main there was no such setting and the cookie was never Secure."""
    settings, app, tokens, _ = session_world
    forwarded = {"X-Forwarded-Proto": "https"}

    def cookie_via_proxy(application) -> str:
        """Log in through the 'proxy' (the browser sees https, so it sends back even a Secure cookie)."""
        client = browser(application)
        page = client.get("/login", headers=forwarded)
        nonce = hidden(page.text, "csrf_token") if 'name="csrf_token"' in page.text else ""
        r = client.post(
            "/login",
            headers={**forwarded, "Cookie": f"dblocks_login_csrf={nonce}"},
            data={"token": tokens["viewer"], "next": "/", "csrf_token": nonce},
        )
        assert r.status_code == 303
        return set_cookies(r)[COOKIE_NAME].lower()

    assert "; secure" not in cookie_via_proxy(app), "X-Forwarded-Proto was believed without DBLOCKS_TRUST_PROXY"
    assert RegistrySettings.from_env({"DBLOCKS_HOME": "/nonexistent", "DBLOCKS_TRUST_PROXY": "1"}).trust_proxy
    trusting = create_app(replace(settings, trust_proxy=True))
    try:
        assert "; secure" in cookie_via_proxy(trusting), "a trusted proxy's X-Forwarded-Proto: https was ignored"
    finally:
        trusting.state.registry.db.dispose()
