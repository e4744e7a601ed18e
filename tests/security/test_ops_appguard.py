"""#14.9: the app guard allows exactly the dblocks app manifest, and installs only on the Flower it was verified on."""

from __future__ import annotations

import hashlib
import inspect
import io
import tomllib
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from dblocks.client import appguard
from dblocks.client.appguard import AppGuard, check_fab

GENUINE = (files("dblocks.server") / "flwrapp" / "pyproject.toml").read_text()
REPO = Path(__file__).resolve().parents[2]


def fab_of(pyproject: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", pyproject)
    return buf.getvalue()


# settings a server could add to the genuine manifest to make a SuperNode run something else
ADDITIONS = {
    "tool.flwr.app.components.agentapp": ("[tool.flwr.app.components]", 'agentapp = "subprocess:run"'),
    "tool.flwr.app.components.mods": ("[tool.flwr.app.components]", 'mods = ["evil:mod"]'),
    "tool.flwr.app.fab-include": ("[tool.flwr.app]", 'fab-include = ["**/*.py"]'),
    "tool.flwr.app.config.extra": ("[tool.flwr.app.config]", 'extra = "x"'),
    "project.entry-points": ("[project]", 'entry-points = { "flwr.app" = { a = "evil:a" } }'),
    "project.scripts": ("[project]", 'scripts = { flwr-clientapp = "evil:main" }'),
    "project.optional-dependencies": ("[project]", 'optional-dependencies = { x = ["evil"] }'),
    "tool.flwr.federations": ("[tool.flwr.app]", '[tool.flwr.federations]\ndefault = "x"'),
    "tool.setuptools": ("[tool.flwr.app]", '[tool.setuptools]\npy-modules = ["evil"]'),
}


def leaves(table: dict, path: str = "") -> set[str]:
    """Dotted names of the settings (non-table values) in a parsed TOML table."""
    out = set()
    for k, v in table.items():
        out |= leaves(v, f"{path}{k}.") if isinstance(v, dict) else {path + k}
    return out


def with_setting(section: str, line: str) -> str:
    assert section in GENUINE
    if line.startswith("["):  # a table of its own: append it
        return GENUINE + "\n" + line + "\n"
    return GENUINE.replace(section + "\n", section + "\n" + line + "\n", 1)


def test_app_guard_refuses_components_and_settings_beyond_the_dblocks_app():
    """#14.9: on main, check_fab accepted the dblocks manifest with an extra `agentapp = "subprocess:run"` component
    (Flower then makes the run an AgentApp run and the SuperNode executes that component), extra entry points,
    scripts, `fab-include` patterns, federations and run settings: it looked only at `clientapp` and `dependencies`.
    Now each is refused with its dotted name, and Flower's own FAB verification refuses to store such a FAB."""
    from flwr.cli.build import build_fab_from_disk
    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    genuine = build_fab_from_disk(Path(str(files("dblocks.server") / "flwrapp")))  # what `flwr run` sends
    assert check_fab(genuine) == []
    assert leaves(appguard.MANIFEST) == leaves(tomllib.loads(GENUINE)), "the allow-list drifted from the app manifest"
    refusals: list[str] = []
    guard = AppGuard(on_refusal=refusals.append)
    for i, (name, (section, line)) in enumerate(ADDITIONS.items()):
        content = fab_of(with_setting(section, line))
        assert tomllib.loads(zipfile.ZipFile(io.BytesIO(content)).read("pyproject.toml").decode())
        problems = check_fab(content)
        assert any(name in p for p in problems), (name, problems)
        reviewed = guard.review(Fab(str(i), content, {}), run_id=i)
        assert not _verify_fab(reviewed, guard.trusted_entities(None)), f"{name}: Flower would store this FAB"
        assert name in refusals[-1] and f"run {i}" in refusals[-1]  # the reason reaches the company's log
    deps = check_fab(fab_of(GENUINE.replace("dependencies = []", 'dependencies = ["requests"]')))
    assert any("project.dependencies" in p for p in deps)
    wrong_type = check_fab(
        fab_of(GENUINE.replace('serverapp = "', 'serverapp = ["').replace(':app"\nclientapp', ':app"]\nclientapp', 1))
    )
    assert any("serverapp" in p for p in wrong_type), wrong_type


def test_app_guard_installs_only_on_the_verified_flower(monkeypatch):
    """#14.9: on main, AppGuard.install() patched `_pull_and_store_message` whatever its body, as long as it had
    parameters named get_fab and trusted_entities: a Flower whose function kept the names but no longer verified
    FABs (here: a same-signature stand-in) was patched silently and the guard did nothing. Now install() refuses."""
    import flwr.supernode.start_client_internal as sci

    real = sci._pull_and_store_message

    def lookalike(
        state,
        object_store,
        node_config,
        receive,
        get_run,
        get_fab,
        pull_object,
        confirm_message_received,
        trusted_entities,
    ):
        return None  # fetches nothing, verifies nothing

    assert list(inspect.signature(lookalike).parameters) == list(inspect.signature(real).parameters)
    monkeypatch.setattr(sci, "_pull_and_store_message", lookalike)
    with pytest.raises(ValueError, match="_pull_and_store_message"):
        AppGuard().install()
    assert sci._pull_and_store_message is lookalike  # nothing was patched


def test_app_guard_patched_flower_method_is_the_verified_one():
    """#14.9: fails loudly when Flower changes under the guard. On main there was no pin to check against
    (appguard had no VERIFIED_FLWR / VERIFIED_SOURCES). If this fails after a Flower upgrade: read the new
    flwr.supernode.start_client_internal (_pull_and_store_message must still call get_fab and verify the FAB with
    trusted_entities before storing it; start_client_internal must still call it by keyword), then update
    VERIFIED_FLWR, VERIFIED_SOURCES and the flwr pin in pyproject.toml together."""
    import flwr
    import flwr.supernode.start_client_internal as sci
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    pinned = [
        Requirement(d)
        for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if Requirement(d).name == "flwr"
    ]
    assert len(pinned) == 1 and pinned[0].specifier == SpecifierSet(appguard.VERIFIED_FLWR), (
        f"pyproject pins {pinned}, the app guard was verified on flwr{appguard.VERIFIED_FLWR}"
    )
    assert Version(flwr.__version__) in SpecifierSet(appguard.VERIFIED_FLWR), flwr.__version__
    patched = getattr(sci, appguard.PATCHED)
    patched = getattr(patched, "__wrapped__", patched) if hasattr(patched, "__dblocks_guard__") else patched
    assert list(inspect.signature(patched).parameters) == [
        "state",
        "object_store",
        "node_config",
        "receive",
        "get_run",
        "get_fab",
        "pull_object",
        "confirm_message_received",
        "trusted_entities",
    ], inspect.signature(patched)
    for name, digest in appguard.VERIFIED_SOURCES.items():
        seen = hashlib.sha256(inspect.getsource(getattr(sci, name)).encode()).hexdigest()
        assert seen == digest or name == appguard.PATCHED, f"Flower's {name} changed: re-verify the app guard"
    seen = hashlib.sha256(inspect.getsource(patched).encode()).hexdigest()
    assert seen == appguard.VERIFIED_SOURCES[appguard.PATCHED], f"Flower's {appguard.PATCHED} changed: re-verify"
    assert appguard.flower_mismatch() == []
