"""Carry the registry's node decisions to the SuperLink: approved keys registered, revoked keys unregistered.

The registry is the source of truth (the dashboard, REST and `dbserver nodes` all write there); the SuperLink
only admits a SuperNode whose public key is registered with it (`--enable-supernode-auth`). `sync_once`
compares the two by public key, never by remembered ids, so it is idempotent and recovers from any crash:

    registry approved,   key not on the SuperLink          -> register it (Control API RegisterNode)
    registry revoked,    key registered on the SuperLink   -> unregister it: its next Fleet request is refused
                                                              (401) and the SuperNode stops
    registry pending,    key registered (e.g. by hand)      -> left alone and reported (not ours to undo)

Each node's SuperLink node id (what the ServerApp records in cohorts) and the outcome are written into the
registry node's `info` ("superlink": {"node_id", "status", "error"}), only when they change.

Flower 1.41 keeps an unregistered key forever ("public key already in use"): a revoked company that is
approved again must create a new node key; the sync reports that in `info.superlink.error`.

The same pass publishes the SecAgg directory (`DirectoryPublisher`): {SuperLink node id: enrolled SecAgg
identity} of every approved, registered node, signed with the operator's directory key whenever it changes.
SuperLink node ids are the SecAgg client ids (a ClientApp's `context.node_id`), so this is the one place where
both halves of the mapping are known. The ServerApp relays the file; companies verify it with directory.pub.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from dblocks.privacy.secagg.directory import Directory, load_signing_key

log = logging.getLogger("dblocks.nodesync")

REGISTERED_STATES = {"registered", "online", "offline"}  # Flower node statuses that admit the key


def key_der(public_key: str | bytes) -> bytes:
    """DER SubjectPublicKeyInfo of a PEM or OpenSSH public key: the form both sides are compared in."""
    text = public_key.decode() if isinstance(public_key, bytes) else public_key
    text = text.strip()
    key = (
        serialization.load_pem_public_key(text.encode())
        if text.startswith("-----BEGIN")
        else serialization.load_ssh_public_key(text.encode())
    )
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class LinkNode:
    node_id: int
    status: str  # registered | online | offline | unregistered
    public_key_der: bytes
    name: str


class SuperLinkNodes:
    """The SuperLink's node list through its Control API (protobuf over HTTPS, loopback only)."""

    def __init__(self, address: str, ca: Path | None, insecure: bool = False, timeout: float = 20.0):
        from flwr.supercore.control import ControlHttpClient

        self._client = ControlHttpClient.from_server_address(
            address, insecure, None if insecure else str(ca), interceptors=[]
        )
        self.address = address

    def close(self) -> None:
        self._client.close()

    def list(self) -> list[LinkNode]:
        from flwr.proto.control_pb2 import ListNodesRequest

        res = self._client.ListNodes(ListNodesRequest())
        return [LinkNode(int(n.node_id), n.status, key_der(n.public_key), n.name) for n in res.nodes_info]

    def register(self, public_key: str, name: str) -> int:
        from flwr.proto.control_pb2 import RegisterNodeRequest

        pem = serialization.load_der_public_key(key_der(public_key)).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        res = self._client.RegisterNode(RegisterNodeRequest(public_key=pem, name=name[:100]))
        if not res.node_id:
            raise RuntimeError("the SuperLink did not register the key")
        return int(res.node_id)

    def unregister(self, node_id: int) -> None:
        from flwr.proto.control_pb2 import UnregisterNodeRequest

        self._client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))


@dataclass
class SyncReport:
    registered: list[str] = field(default_factory=list)  # registry node ids
    unregistered: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    foreign: list[int] = field(default_factory=list)  # SuperLink nodes the registry does not approve

    def changed(self) -> bool:
        return bool(self.registered or self.unregistered or self.errors)


@dataclass(frozen=True)
class DirectoryPublisher:
    """Signs {SuperLink node id: SecAgg identity} with the directory key (`signing_key`) into `path`."""

    signing_key: Path
    path: Path

    def publish(self, entries: dict[str, bytes]) -> bool:
        """Write a new signed version if the entries changed; True if it did."""
        current = Directory.from_bytes(self.path.read_bytes()) if self.path.exists() else None
        if current is not None and current.entries == entries:
            return False
        signed = Directory.sign(current.version + 1 if current else 1, entries, load_signing_key(self.signing_key))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(signed.to_bytes())
        tmp.replace(self.path)
        return True


def sync_once(registry, link: SuperLinkNodes, directory: DirectoryPublisher | None = None) -> SyncReport:
    """One reconciliation pass (see the module docstring). `registry`: a RegistryClient with a service token."""
    report = SyncReport()
    enrolled: dict[str, bytes] = {}
    on_link = {n.public_key_der: n for n in link.list()}
    known = set()
    for node in registry.list_nodes():
        der = key_der(node["public_key"])
        known.add(der)
        have = on_link.get(der)
        want = node["status"]
        state = {
            "node_id": str(have.node_id) if have else None,
            "status": have.status if have else "absent",
            "error": None,
        }
        try:
            if want == "approved" and have is None:
                state["node_id"] = str(link.register(node["public_key"], node["id"]))
                state["status"] = "registered"
                report.registered.append(node["id"])
            elif want == "approved" and have is not None and have.status == "unregistered":
                state["error"] = (
                    "this key was revoked before; Flower never admits an unregistered key again: "
                    "the company must create a new key (`dbclient keys init`) and be approved anew"
                )
            elif want == "revoked" and have is not None and have.status in REGISTERED_STATES:
                link.unregister(have.node_id)
                state["status"] = "unregistered"
                report.unregistered.append(node["id"])
        except Exception as e:  # noqa: BLE001 - one node's failure must not stop the others
            state["error"] = f"{type(e).__name__}: {e}"[:500]
        if state["error"]:
            report.errors[node["id"]] = state["error"]
        elif want == "approved" and state["node_id"] and node.get("secagg_identity"):
            enrolled[state["node_id"]] = bytes.fromhex(node["secagg_identity"])
        if (node.get("info") or {}).get("superlink") != state:
            registry.node_seen(node["id"], {**(node.get("info") or {}), "superlink": state})
    report.foreign = sorted(
        n.node_id for der, n in on_link.items() if der not in known and n.status in REGISTERED_STATES
    )
    if directory is not None:
        directory.publish(enrolled)
    return report


class NodeSyncLoop(threading.Thread):
    """`sync_once` every `interval` seconds until stopped; errors are logged, never fatal."""

    def __init__(
        self, registry, link: SuperLinkNodes, interval: float = 5.0, directory: DirectoryPublisher | None = None
    ):
        super().__init__(name="node-sync", daemon=True)
        self.registry, self.link, self.interval, self.directory = registry, link, interval, directory
        self.stopped = threading.Event()
        self.passes = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                r = sync_once(self.registry, self.link, self.directory)
                if r.changed():
                    log.info(
                        "node sync: registered %s, unregistered %s, errors %s", r.registered, r.unregistered, r.errors
                    )
            except Exception as e:  # noqa: BLE001 - registry or SuperLink restarting: try again next pass
                log.warning("node sync pass failed: %s", e)
            self.passes += 1
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
