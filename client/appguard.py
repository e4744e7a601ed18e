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
  * its pyproject.toml has no setting the dblocks app manifest (server/flwrapp/pyproject.toml) does not have
    (`MANIFEST`): components `serverapp` and `clientapp` only (an `agentapp` component, for one, turns the run
    into an AgentApp run whose component the SuperNode executes instead of the ClientApp), no entry points,
    scripts, FAB include patterns or federations, and only the run setting `config-path`,
  * its `[tool.flwr.app.components] clientapp` is `dblocks.client.clientapp:app`,
  * its `[project] dependencies` is empty (and SuperNodes never install dependencies unless told to);

and enforces that through Flower's own trusted-entity check: the guard generates a one-off Ed25519 key per
process, adds it to the trusted entities, and signs (vouches for) the FABs that pass the check above, right
where the SuperNode fetches them. Flower then verifies every FAB before storing it: a FAB that fails the
policy keeps whatever signatures it came with, so it runs only if one of the company's own trusted entities
(`--trusted-entities FILE`, e.g. a Flower Hub publisher) signed it; otherwise Flower replies to the server
with "The FAB could not be verified" and no code of it is installed or run.

The guard wraps a private function of Flower's SuperNode, so it installs only on the Flower it was verified on:
a version in `VERIFIED_FLWR` (the pin of pyproject.toml) whose patched function, its caller and the FAB check it
relies on have exactly the source in `VERIFIED_SOURCES`. Any other Flower makes `dbclient join` refuse to start
rather than run unguarded.
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

# Every setting the dblocks app manifest has, and what its value may be: a table (dict) lists the keys allowed
# in it; a type (str, list of strings) allows any such value; anything else is the one value allowed.
MANIFEST: dict = {
    "build-system": {"requires": list, "build-backend": str},
    "project": {"name": str, "version": str, "description": str, "dependencies": []},
    "tool": {
        "hatch": {"build": {"targets": {"wheel": {"packages": list}}}},
        "flwr": {
            "app": {
                "publisher": str,
                "components": {"serverapp": str, "clientapp": DBLOCKS_CLIENTAPP},
                "config": {"config-path": str},
            }
        },
    },
}

# The Flower the guard was verified on: the version range (the pin in pyproject.toml) and the sha256 of
# inspect.getsource of each function the guard depends on, in flwr.supernode.start_client_internal.
VERIFIED_FLWR = "==1.41.*"
PATCHED = "_pull_and_store_message"  # wrapped: it fetches, verifies and stores each run's FAB
VERIFIED_SOURCES = {
    PATCHED: "eaf5d0e36dc34e4cf46a490511d077ac55cc8edbbcdbe938c1f6dbcb758628be",
    "_verify_fab": "dc3eb78d803b8fe9a65bc704e17da8b58e9f43020b43bf2ba0ba4812483634aa",  # checks the vouch
    "start_client_internal": "9e89a6eb68fbec6821e817cd2c09f7894fc7b0f5725c2365b19a7122307f11f3",  # calls PATCHED
}

log = logging.getLogger("dblocks.appguard")


class FlowerNotVerified(ValueError):
    """The installed Flower is not the one the app guard was verified on; the SuperNode is not started."""


def check_fab(content: bytes) -> list[str]:
    """Why this FAB is not the dblocks app manifest (empty list: it is)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        return ["not a zip archive"]
    listed = [n for n in zf.namelist() if not n.endswith("/")]
    names = set(listed)
    problems = []
    extra = sorted(names - ALLOWED_FILES)
    if extra:
        problems.append(f"ships files {extra[:8]}{' ...' if len(extra) > 8 else ''}: the dblocks app carries no code")
    if len(listed) != len(names):
        problems.append("ships the same file name twice")
    if "pyproject.toml" not in names:
        return problems + ["has no pyproject.toml"]
    try:
        cfg = tomllib.loads(zf.read("pyproject.toml").decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        return problems + [f"pyproject.toml is not valid TOML ({e})"]
    component = cfg.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {}).get("clientapp")
    if component != DBLOCKS_CLIENTAPP:
        problems.append(f"names the ClientApp {component!r}, not {DBLOCKS_CLIENTAPP!r}")
    clientapp = "tool.flwr.app.components.clientapp"  # reported above
    return problems + [text for where, text in _beyond_manifest(cfg, MANIFEST, "") if where != clientapp]


def _beyond_manifest(value, spec, path: str) -> list[tuple[str, str]]:
    """(dotted path, why) for what of `value` (parsed pyproject.toml at `path`) the manifest `spec` does not allow."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [(path, f"has {path} as a {type(value).__name__}, where the dblocks app has a table")]
        problems = []
        for key, v in value.items():
            where = f"{path}.{key}" if path else key
            if key in spec:
                problems += _beyond_manifest(v, spec[key], where)
            else:
                problems.append(
                    (
                        where,
                        f"has the setting {where}, which the dblocks app does not have (allowed there: {sorted(spec)})",
                    )
                )
        return problems
    if isinstance(spec, type):
        ok = isinstance(value, spec) and (
            spec is not list or (isinstance(value, list) and all(isinstance(x, str) for x in value))
        )
        kind = f"{spec.__name__}{' of strings' * (spec is list)}"
        return [] if ok else [(path, f"sets {path} to {str(value)[:200]!r}, not a {kind}")]
    return [] if value == spec else [(path, f"sets {path} to {str(value)[:200]!r}, not {spec!r}")]


def flower_mismatch() -> list[str]:
    """How the installed Flower differs from the one the guard was verified on (empty list: it does not)."""
    import flwr
    import flwr.supernode.start_client_internal as sci
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    problems = []
    if Version(flwr.__version__) not in SpecifierSet(VERIFIED_FLWR):
        problems.append(f"flwr {flwr.__version__} is outside the verified range {VERIFIED_FLWR}")
    for name, digest in VERIFIED_SOURCES.items():
        fn = getattr(sci, name, None)
        if fn is not None and getattr(fn, "__dblocks_guard__", None) is not None:
            fn = fn.__wrapped__
        if fn is None:
            problems.append(f"flwr.supernode.start_client_internal.{name} is gone")
            continue
        try:
            seen = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
        except (OSError, TypeError) as e:
            problems.append(f"the source of {name} cannot be read ({e})")
            continue
        if seen != digest:
            problems.append(
                f"flwr.supernode.start_client_internal.{name} changed (source sha256 {seen[:16]}..., "
                f"verified {digest[:16]}...)"
            )
    return problems


class AppGuard:
    """Vouches (Ed25519, Flower's FAB verification format) for FABs that pass `check_fab`."""

    def __init__(self, on_refusal: Callable[[str], None] | None = None):
        self._key = ed25519.Ed25519PrivateKey.generate()
        self.public_key = (
            self._key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
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
        verifications = {
            **fab.verifications,
            "valid_license": fab.verifications.get("valid_license") or VOUCH_ENTITY,
            VOUCH_ENTITY: vouch,
        }
        return Fab(fab.hash_str, fab.content, verifications)

    def install(self) -> None:
        """Put the guard where Flower's SuperNode (running in this process) fetches each run's FAB."""
        import flwr.supernode.start_client_internal as sci

        problems = flower_mismatch()
        if problems:
            raise FlowerNotVerified(
                "dblocks' app guard was verified on another Flower, so the SuperNode is not started (it would run "
                f"unguarded): {'; '.join(problems)}. Install the Flower dblocks pins (pip install "
                f"'flwr[simulation]{VERIFIED_FLWR}' as in dblocks' pyproject.toml) or a dblocks release verified on "
                "this Flower"
            )
        original = getattr(sci, PATCHED)
        if getattr(original, "__dblocks_guard__", None) is not None:
            original = original.__wrapped__

        def guarded(*args, **kw):
            fetch = kw["get_fab"]
            kw["get_fab"] = lambda fab_hash, run_id: self.review(fetch(fab_hash, run_id), run_id)
            kw["trusted_entities"] = self.trusted_entities(kw.get("trusted_entities"))
            return original(*args, **kw)

        # function attributes (what functools.wraps sets, without copying the name and docstring)
        vars(guarded).update({"__wrapped__": original, "__dblocks_guard__": self})
        setattr(sci, PATCHED, guarded)


def _b64url(b: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(b).decode().rstrip("=")
