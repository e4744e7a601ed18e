"""Which code a company runs: only its own installed dblocks ClientApp, whatever the server sends.

Flower ships the app of every run to the SuperNode as a FAB (a zip with pyproject.toml, and possibly Python
files) and the SuperNode executes the ClientApp component the FAB names. A compromised server could send a
FAB with its own code. Flower's defence is `--trusted-entities`: the SuperNode runs only FABs signed by a
listed Ed25519 key. In open-source Flower 1.41 those signatures come only from Flower Hub (the SuperLink
attaches them when it fetches a Hub app; a FAB submitted with `flwr run` carries none), so that defence alone
would refuse every dblocks run.

dblocks' app needs no code from the server: its FAB is a manifest whose `clientapp` component is
`dblocks.client.clientapp:app`, which the company installed itself. `dbclient join` therefore accepts a FAB
exactly when

  * it contains only `pyproject.toml` and Flower's `.info/CONTENT` manifest (no code, nothing that could
    shadow an installed module on the ClientApp's import path),
  * its `[tool.flwr.app.components] clientapp` is `dblocks.client.clientapp:app`,
  * its `[project] dependencies` is empty (and SuperNodes never install dependencies unless told to);

and enforces that through Flower's own trusted-entity check: the guard generates a one-off Ed25519 key per
process, adds it to the trusted entities, and signs (vouches for) the FABs that pass the check above, right
where the SuperNode fetches them. Flower then verifies every FAB before storing it: a FAB that fails the
policy keeps whatever signatures it came with, so it runs only if one of the company's own trusted entities
(`--trusted-entities FILE`, e.g. a Flower Hub publisher) signed it; otherwise Flower replies to the server
with "The FAB could not be verified" and no code of it is installed or run.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import time
import tomllib
import zipfile
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

DBLOCKS_CLIENTAPP = "dblocks.client.clientapp:app"
ALLOWED_FILES = {"pyproject.toml", ".info/CONTENT"}
VOUCH_ENTITY = "dblocks-app-policy"

log = logging.getLogger("dblocks.appguard")


def check_fab(content: bytes) -> list[str]:
    """Why this FAB is not the dblocks app manifest (empty list: it is)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        return ["not a zip archive"]
    names = {n for n in zf.namelist() if not n.endswith("/")}
    problems = []
    extra = sorted(names - ALLOWED_FILES)
    if extra:
        problems.append(f"ships files {extra[:8]}{' ...' if len(extra) > 8 else ''}: the dblocks app carries no code")
    if "pyproject.toml" not in names:
        return problems + ["has no pyproject.toml"]
    try:
        cfg = tomllib.loads(zf.read("pyproject.toml").decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        return problems + [f"pyproject.toml is not valid TOML ({e})"]
    component = cfg.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {}).get("clientapp")
    if component != DBLOCKS_CLIENTAPP:
        problems.append(f"names the ClientApp {component!r}, not {DBLOCKS_CLIENTAPP!r}")
    deps = cfg.get("project", {}).get("dependencies", [])
    if deps:
        problems.append(f"asks for dependencies {deps[:5]}")
    return problems


class AppGuard:
    """Vouches (Ed25519, Flower's FAB verification format) for FABs that pass `check_fab`."""

    def __init__(self, on_refusal: Callable[[str], None] | None = None):
        self._key = ed25519.Ed25519PrivateKey.generate()
        self.public_key = self._key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                              serialization.PublicFormat.OpenSSH).decode()
        self.on_refusal = on_refusal or (lambda text: None)
        self.refused: dict[int, list[str]] = {}  # run id -> reasons

    def trusted_entities(self, company_entities: dict[str, str] | None) -> dict[str, str]:
        return {**(company_entities or {}), VOUCH_ENTITY: self.public_key}

    def review(self, fab, run_id: int):
        """The FAB, with this guard's signature added if it passes the policy (else unchanged)."""
        from flwr.supercore.fab import Fab
        from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

        problems = check_fab(fab.content)
        if problems:
            self.refused[run_id] = problems
            text = f"refused the app of run {run_id}: it {'; it '.join(problems)}"
            log.error("%s", text)
            self.on_refusal(text)
            return fab
        signed_at = int(time.time())
        digest = hashlib.sha256(fab.content).digest()
        sig = self._key.sign(create_message_to_sign(digest, signed_at))
        vouch = json.dumps({"signature": _b64url(sig), "signed_at": signed_at})
        verifications = {**fab.verifications, "valid_license": fab.verifications.get("valid_license") or VOUCH_ENTITY,
                         VOUCH_ENTITY: vouch}
        return Fab(fab.hash_str, fab.content, verifications)

    def install(self) -> None:
        """Put the guard where Flower's SuperNode (running in this process) fetches each run's FAB."""
        import flwr.supernode.start_client_internal as sci

        original = getattr(sci, "_pull_and_store_message")
        params = inspect.signature(getattr(original, "__wrapped__", original)).parameters
        if not {"get_fab", "trusted_entities"} <= params.keys():
            raise RuntimeError("this Flower version fetches apps differently; dblocks' app guard cannot be installed "
                               f"(flwr {__import__('flwr').__version__}); refusing to run unguarded")
        if getattr(original, "__dblocks_guard__", None) is not None:
            original = original.__wrapped__

        def guarded(*args, **kw):
            fetch = kw["get_fab"]
            kw["get_fab"] = lambda fab_hash, run_id: self.review(fetch(fab_hash, run_id), run_id)
            kw["trusted_entities"] = self.trusted_entities(kw.get("trusted_entities"))
            return original(*args, **kw)

        guarded.__wrapped__ = original
        guarded.__dblocks_guard__ = self
        sci._pull_and_store_message = guarded


def _b64url(b: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(b).decode().rstrip("=")
