"""A small network of test hosts made of Linux network namespaces (needs root, iproute2 and nftables).

    server host  198.18.0.1/24 on a bridge          companies  198.18.0.10, .11, ... each on a veth into the bridge
    every company host's nftables firewall drops every inbound connection (loopback and replies to its own
    outbound connections excepted), as a company firewall would.

Addresses come from 198.18.0.0/15 (RFC 2544, for network tests); the namespaces have no link to the host's
network, so no packet leaves the machine. Names carry the owner's PID; namespaces of dead owners (a killed
test run) are deleted first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "dbk"
SERVER_IP = "198.18.0.1"
FIREWALL = """
table inet companyfw {
    chain input {
        type filter hook input priority 0; policy drop;
        iif lo accept
        ct state established,related accept
    }
    chain output {
        type filter hook output priority 0; policy accept;
    }
}
"""


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stdout + r.stderr).strip()[-800:]}")
    return r


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing: install the Debian package {package} (make sysdeps)"
    probe = f"{PREFIX}probe{os.getpid()}"
    r = run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"`ip netns add` is not permitted here: {r.stderr.strip()[:200]}"
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", probe, "nft", "-f", "-"], input=FIREWALL, capture_output=True, text=True, timeout=20
        )
        if r.returncode != 0:
            return f"nftables does not work in a namespace here: {r.stderr.strip()[:200]}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


def remove_stale() -> None:
    """Delete namespaces left behind by test runs whose process is gone."""
    out = run("ip", "netns", "list", check=False).stdout
    for name in re.findall(rf"^({PREFIX}(\d+)\w*)", out, flags=re.M):
        ns, pid = name
        if not Path(f"/proc/{pid}").exists():
            run("ip", "netns", "del", ns, check=False)


@dataclass
class Topology:
    num_companies: int
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    created: list[str] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"{self.tag}s"

    def company(self, i: int) -> str:
        return f"{self.tag}c{i}"

    @staticmethod
    def company_ip(i: int) -> str:
        return f"198.18.0.{10 + i}"

    def create(self) -> Topology:
        remove_stale()
        s = self.server
        self._add(s)
        run("ip", "-n", s, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", s, "addr", "add", f"{SERVER_IP}/24", "dev", "br0")
        run("ip", "-n", s, "link", "set", "br0", "up")
        for i in range(self.num_companies):
            c = self.company(i)
            self._add(c)
            run("ip", "-n", s, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", c)
            run("ip", "-n", s, "link", "set", f"v{i}", "master", "br0", "up")
            run("ip", "-n", c, "addr", "add", f"{self.company_ip(i)}/24", "dev", "eth0")
            run("ip", "-n", c, "link", "set", "eth0", "up")
            r = subprocess.run(
                ["ip", "netns", "exec", c, "nft", "-f", "-"], input=FIREWALL, capture_output=True, text=True, timeout=20
            )
            if r.returncode != 0:
                raise RuntimeError(f"firewall of {c}: {r.stderr}")
        return self

    def _add(self, ns: str) -> None:
        run("ip", "netns", "add", ns)
        self.created.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")

    def exec(self, ns: str, *cmd: str) -> list[str]:
        """The command line that runs `cmd` inside namespace `ns`."""
        return ["ip", "netns", "exec", ns, *cmd]

    def pull_network(self, i: int) -> None:
        """Company i loses its network (the cable is pulled)."""
        run("ip", "-n", self.company(i), "link", "set", "eth0", "down")

    def destroy(self) -> None:
        for ns in reversed(self.created):
            run("ip", "netns", "del", ns, check=False)
        self.created.clear()
