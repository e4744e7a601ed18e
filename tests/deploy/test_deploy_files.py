"""deploy/: every file is checked by a tool that runs here (no container engine), and the commands the compose
file and the Kubernetes manifests run are parsed by the programs that will run them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}:{shutil.os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(f"`{name}` is not installed (pip install -e '.[dev]')")
    return path


def check(*cmd: str) -> str:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


# ---- Dockerfiles ------------------------------------------------------------------------------------------
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))


def test_dockerfiles_pass_hadolint():
    assert len(DOCKERFILES) == 2
    check(tool("hadolint"), "--failure-threshold", "style", *map(str, DOCKERFILES))


def test_dockerfiles_build_on_flowers_images_of_the_installed_version():
    from importlib.metadata import version

    flwr = version("flwr")
    pkg_dirs = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    for path, base, entry in (
        (DEPLOY / "docker" / "server.Dockerfile", "flwr/superlink", "dbserver"),
        (DEPLOY / "docker" / "client.Dockerfile", "flwr/supernode", "dbclient"),
    ):
        text = path.read_text()
        assert f"ARG FLWR_VERSION={flwr}" in text, f"{path.name}: base image must match the installed flwr {flwr}"
        assert re.search(rf"^FROM {re.escape(base)}:\$\{{FLWR_VERSION\}}$", text, re.M), path.name
        assert f'ENTRYPOINT ["{entry}"]' in text  # the client never starts a bare flower-supernode (no app guard)
        copied = set(re.findall(r"^COPY (\w+)/ \1/$", text, re.M))
        assert copied == pkg_dirs, f"{path.name} copies {copied}, the package has {pkg_dirs}"


# ---- compose ------------------------------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_spec_and_lints():
    env = dict(shutil.os.environ, DBLOCKS_PUBLIC_HOST="fl.example.org", POSTGRES_PASSWORD="x")
    r = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    check(tool("yamllint"), "-c", str(DEPLOY / ".yamllint.yaml"), str(COMPOSE), *map(str, K8S))


def test_compose_exposes_only_the_fleet_gateway():
    services = compose()["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published == {"superlink": ["9092:9092", "127.0.0.1:8700:8700"]}, published
    args = services["superlink"]["command"]
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert "--enable-supernode-auth" in args and "--disable-runtime-dependency-installation" in args
    for name in ("registry", "gateway", "sync"):
        assert services[name]["network_mode"] == "service:superlink", name  # the gateway reaches 127.0.0.1:9091


def commands() -> list[tuple[str, list[str]]]:
    """(program, arguments) of every dblocks container in compose.yaml and the Kubernetes manifests."""
    out = []
    for s in compose()["services"].values():
        if "entrypoint" in s:
            out.append((s["entrypoint"][0], [interpolate(a) for a in s["command"]]))
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                if c["image"].startswith("dblocks-"):
                    out.append((c["command"][0], [re.sub(r"\$\((\w+)\)", "fl.example.org", a) for a in c["args"]]))
    return out


def interpolate(text: str) -> str:
    return re.sub(
        r"\$\{(\w+)(:\?[^}]*)?\}", lambda m: {"DBLOCKS_PUBLIC_HOST": "fl.example.org"}.get(m.group(1), "x"), text
    )


def test_every_container_command_parses_with_the_program_that_runs_it():
    import click
    import typer
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    from dblocks.client.cli import app as client_app
    from dblocks.server.cli import app as server_app

    seen = set()
    for program, args in commands():
        seen.add(program)
        if program == "flower-superlink":
            _parse_args_run_superlink().parse_args(args)  # argparse exits on an unknown option
            continue
        group = typer.main.get_command({"dbserver": server_app, "dbclient": client_app}[program])
        cmd, rest = group, list(args)
        while isinstance(cmd, click.Group):
            name, cmd, rest = cmd.resolve_command(cmd.make_context(program, list(rest), resilient_parsing=True), rest)
        cmd.make_context(name, rest)  # raises click.UsageError on an unknown option or a bad value
    assert seen == {"flower-superlink", "dbserver", "dbclient"}


# ---- Kubernetes ---------------------------------------------------------------------------------------------
def test_kubernetes_manifests_validate_against_the_api_schemas():
    out = check(tool("kubernetes-validate"), "--strict", *map(str, K8S))
    assert out.count("passed") >= 10


def test_kubernetes_exposes_only_the_fleet_gateway():
    docs = [d for p in K8S for d in yaml.safe_load_all(p.read_text()) if d]
    services = [d for d in docs if d["kind"] == "Service"]
    public = [s for s in services if s["spec"].get("type") in ("LoadBalancer", "NodePort")]
    assert [(s["metadata"]["name"], [p["port"] for p in s["spec"]["ports"]]) for s in public] == [
        ("dblocks-fleet", [9092])
    ]
    server = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "dblocks-server")
    containers = {c["name"]: c for c in server["spec"]["template"]["spec"]["containers"]}
    superlink = containers["superlink"]["args"]
    assert superlink[superlink.index("--host") + 1] == "127.0.0.1" and not containers["superlink"].get("ports")
    registry = containers["registry"]["args"]
    assert registry[registry.index("--host") + 1] == "127.0.0.1"
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["dblocks-server-ingress"]["spec"]["ingress"] == [{"ports": [{"port": 9092, "protocol": "TCP"}]}]
    assert "ingress" not in policies["dblocks-node-no-ingress"]["spec"]  # a company node accepts nothing
