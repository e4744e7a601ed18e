"""#14.2 / #14.3 / #14.4 (slice C): secure aggregation that holds against a malicious server.

Every test builds the company side the way `dbclient join` configures it (JoinOptions -> supernode node config ->
`client_from_context`) where the behaviour depends on that configuration, and uses the in-process protocol
(real X25519/Ed25519/ChaCha20-Poly1305, real Shamir) everywhere else.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import re
import threading

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.common.config import parse_config_args

from dblocks.client.join import JoinOptions, supernode_argv
from dblocks.privacy.mechanisms import clip_vector
from dblocks.privacy.secagg import (
    Contribution,
    Layout,
    LocalNetwork,
    SecAggClient,
    SecAggServer,
    TrustStore,
    plan_round,
    run_round,
)
from dblocks.privacy.secagg.flower import client_from_context, from_recorddict, handle, to_recorddict
from dblocks.privacy.secagg.keys import decode_fields, encode_fields, hkdf, open_sealed, share_ad, x25519
from dblocks.privacy.secagg.messages import field

DIM = 8
VICTIM = "7"


def join_options(tmp_path, **kw) -> JoinOptions:
    """JoinOptions with the settings this version knows (the original lacks the SecAgg ones)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 2)), y=np.zeros(4))
    (tmp_path / "ca.pem").write_text("")
    base = dict(
        server="127.0.0.1:9092",
        data=data,
        home=tmp_path / "home",
        ca=tmp_path / "ca.pem",
        key=tmp_path / "keys" / "node.key",
    )
    known = {f.name for f in dataclasses.fields(JoinOptions)}
    return JoinOptions(**{k: v for k, v in {**base, **kw}.items() if k in known})


def node_config(opts: JoinOptions) -> dict:
    argv = supernode_argv(opts)
    return parse_config_args([argv[argv.index("--node-config") + 1]])


def company(opts: JoinOptions, node_id: int = int(VICTIM), run_id: int = 1) -> SecAggClient:
    """The protocol client `dbclient join` would run for this node (as a ClientApp builds it)."""
    ctx = Context(run_id=run_id, node_id=node_id, node_config=node_config(opts), state=RecordDict(), run_config={})
    return client_from_context(ctx)


def operator_directory(tmp_path, members: dict[str, bytes]):
    """The operator's directory key (directory.pub) and the directory it signs over the enrolled identities.
    None on a version without signed directories."""
    try:
        from dblocks.privacy.secagg.directory import Directory, create_signing_key, load_signing_key
    except ImportError:
        return None, None
    public = create_signing_key(tmp_path / "directory.key")
    (tmp_path / "directory.pub").write_text(public.hex() + "\n")
    blob = Directory.sign(1, members, load_signing_key(tmp_path / "directory.key")).to_bytes()
    return tmp_path / "directory.pub", blob


def victim_identity_public(opts: JoinOptions) -> bytes | None:
    try:
        from dblocks.client.join import secagg_key_path
        from dblocks.privacy.secagg.flower import identity_public
    except ImportError:
        return None
    return identity_public(secagg_key_path(opts))


def update_of(cid: str) -> np.ndarray:
    return clip_vector(np.random.default_rng(int(cid)).normal(size=DIM), 1.0)


def contribute(cid: str):
    return lambda plan: Contribution(update_of(cid))


# #14.2 -------------------------------------------------------------------------------------------------------
def test_server_substituting_neighbour_keys_cannot_unmask_a_pinned_company(tmp_path):
    """#14.2: the server hands the victim certificates of its own making for the victim's neighbours (the real
    companies 11..14 are enrolled, with other keys). With the directory pinned at join the victim refuses them
    and sends nothing; on main (fresh identities, trust on first use, no directory) the victim accepted the
    fakes, sealed its shares to the server's keys and the 'aggregate' over victim + server-run sybils with zero
    inputs returned the victim's update exactly."""
    honest = {str(n): SecAggClient(str(n)).identity.public for n in (11, 12, 13, 14)}
    opts = join_options(tmp_path)
    key_path, _ = operator_directory(tmp_path, {})
    opts = join_options(tmp_path, directory_key=key_path)
    mine = victim_identity_public(opts)
    _, blob = operator_directory(tmp_path, {**honest, VICTIM: mine} if mine else honest)
    victim = company(opts)
    # the malicious server: sybils under the real companies' ids, keys of its own, and inputs it knows (0)
    sybils = {cid: SecAggClient(cid, trust=TrustStore(tofu=True)) for cid in honest}
    server = SecAggServer(trust=TrustStore(tofu=True))
    server.directory = blob  # it relays the genuine signed directory (it cannot sign another one)
    clients = {VICTIM: victim, **sybils}
    inputs = {cid: (lambda plan: Contribution(np.zeros(DIM))) for cid in sybils}
    net = LocalNetwork(clients, {VICTIM: contribute(VICTIM), **inputs})
    cohort = sorted(clients)
    try:
        plan_round(server, 1, {"0": cohort}, {"0": Layout(DIM, 1.0)}, net)
        result = run_round(server, 1, net)
    except Exception as err:  # noqa: BLE001 - whatever stops the attack, the victim's update must not come out
        result = err
    leaked = [a for a in getattr(result, "aggregates", {}).values() if VICTIM in a.survivors]
    for agg in leaked:
        assert not np.allclose(agg.update_sum, update_of(VICTIM), atol=1e-3), "the server unmasked the victim"
    assert not leaked
    assert any(cid == VICTIM and "pinned" in why for cid, _, why in net.refusals), net.refusals
    shares = [k for stage in ("join", "upload") for k in net.stages.get((1, VICTIM), []) if k == stage]
    assert "upload" not in shares


def test_company_identity_key_persists_across_joins_with_mode_0600(tmp_path):
    """#14.2: the SecAgg identity is one persistent key beside the node key (0600), the same in every run, so
    the operator can enrol it once. On main `dbclient join` configured no identity: every run drew a fresh one
    (two runs of one node had different identity keys) and nothing was written."""
    opts = join_options(tmp_path, insecure=True, ca=None)
    first, second = company(opts, run_id=1), company(opts, run_id=2)
    assert first.identity.public == second.identity.public
    keyfile = opts.key.parent / "secagg.key"
    assert keyfile.exists() and (keyfile.stat().st_mode & 0o777) == 0o600
    again = company(join_options(tmp_path, insecure=True, ca=None), run_id=3)  # a later `dbclient join`
    assert again.identity.public == first.identity.public


def _round_one(clients: dict[str, SecAggClient], consistency: bool):
    server = SecAggServer(trust=TrustStore(tofu=True), consistency_check=consistency)
    net = LocalNetwork(clients, {cid: contribute(cid) for cid in clients})
    plan_round(server, 1, {"0": sorted(clients)}, {"0": Layout(DIM, 1.0)}, net)
    return server, net, run_round(server, 1, net)


def test_company_requiring_consistency_refuses_a_plan_without_it(tmp_path):
    """#14.2: `dbclient join --require-consistency` makes the company refuse any plan without the consistency
    check, before it announces keys. On main there was no such option: the company took part in a run without
    it (its update was aggregated)."""
    opts = join_options(tmp_path, insecure=True, ca=None, require_consistency=True)
    others = {str(n): SecAggClient(str(n), trust=TrustStore(tofu=True)) for n in (11, 12, 13, 14)}
    _, net, result = _round_one({VICTIM: company(opts), **others}, consistency=False)
    assert VICTIM not in result.aggregates["0"].survivors
    assert any(cid == VICTIM and "consistency" in why for cid, _, why in net.refusals), net.refusals
    others = {str(n): SecAggClient(str(n), trust=TrustStore(tofu=True)) for n in (11, 12, 13, 14)}
    _, _, result = _round_one(
        {
            VICTIM: company(join_options(tmp_path / "b", insecure=True, ca=None, require_consistency=True), run_id=2),
            **others,
        },
        True,
    )
    assert VICTIM in result.aggregates["0"].survivors  # with the check, it takes part


def test_consistency_is_on_by_default_in_dbserver_start_deployments():
    """#14.2: a run created by `dbserver run new` (RunConfig defaults) aggregates with the consistency check.
    On main the federation never enabled it: DBlocksSecAgg planned every instance with confirm_threshold 0."""
    from dblocks.server.federation.aggregation import DBlocksSecAgg
    from dblocks.server.federation.config import RunConfig

    cfg = RunConfig(run_id="r", min_cohort=3)
    kw = {"consistency": cfg.secagg.consistency} if hasattr(cfg.secagg, "consistency") else {}
    agg = DBlocksSecAgg(None, {0: [(DIM,)]}, cfg.update_clip, cfg.secagg.timeout, None, **kw)
    server = agg.protocol.server
    for cid in "abcde":
        server.trust.tofu = True
        client = SecAggClient(cid, trust=TrustStore(tofu=True))
        server.receive_register({cid: client.register(server.register_requests([cid], 1)[cid])})
    plan = server.add_plan(1, "0", list("abcde"), Layout(DIM, 1.0))
    assert plan.consistency and plan.confirm_threshold > 0


# forward secrecy ------------------------------------------------------------------------------------------------
def _secrets_in(state: bytes) -> set[bytes]:
    """Every 32-byte value a client's exported state holds (hex or base64), i.e. every key it still has."""
    found = set()

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str):
            if re.fullmatch(r"[0-9a-f]{64}", x):
                found.add(bytes.fromhex(x))
            else:
                try:
                    raw = base64.b64decode(x, validate=True)
                except ValueError:
                    return
                if len(raw) == 32:
                    found.add(raw)

    walk(json.loads(state))
    return found


def _publics_in(messages: list[dict]) -> set[bytes]:
    out = set()
    for msg in messages:
        for value in msg.values():
            for blob in value if isinstance(value, list) else [value]:
                if isinstance(blob, bytes):
                    for count in (5, 6):
                        try:
                            out.update(p for p in decode_fields(blob, count) if len(p) == 32)
                        except Exception:  # noqa: BLE001 - not an encoded cert/announcement
                            pass
    return out


def _try_open(sealed: bytes, digest: bytes, sender: str, receiver: str, privates, publics) -> bool:
    """The attacker: every (private it holds, public on the wire) pair, under every key derivation the protocol
    has used (main: the long-term channel key; now: the per-instance seal key)."""
    low, high = sorted((sender, receiver))
    infos = [
        (b"", encode_fields(b"dblocks-secagg/channel/v1", low, high)),
        (digest, encode_fields(b"dblocks-secagg/seal/v2", sender, receiver)),
    ]
    for private in privates:
        for public in publics:
            try:
                shared = x25519(private, public)
            except Exception:  # noqa: BLE001 - not a usable key pair
                continue
            for salt, info in infos:
                try:
                    open_sealed(hkdf(shared, salt, info), sealed, share_ad(digest, sender, receiver), "share")
                    return True
                except Exception:  # noqa: BLE001
                    pass
    return False


def test_past_shares_stay_sealed_after_both_parties_keys_are_compromised():
    """#14.2 forward secrecy: after round 1, an attacker holding everything the victim and a receiver keep
    (identity key, every key in their state) and the server's full transcript cannot open the shares the victim
    sealed to that receiver in round 1. Positive control: with the receiver's state during the round, the same
    attacker opens them. On main the shares were sealed under the long-term channel keys, which the clients keep:
    the recorded round-1 shares opened after the round."""
    ids = [str(n) for n in range(10, 15)]
    pinned = {}
    clients = {cid: SecAggClient(cid, trust=TrustStore(tofu=True)) for cid in ids}
    pinned = {cid: c.identity.public for cid, c in clients.items()}
    for c in clients.values():
        c.trust.pinned.update(pinned)
    server = SecAggServer(trust=TrustStore(dict(pinned), tofu=True))
    transcript: list[dict] = []
    net = LocalNetwork(clients, {cid: contribute(cid) for cid in ids})

    def recording(stage, requests):
        transcript.extend(copy.deepcopy(list(requests.values())))
        replies = net(stage, requests)
        transcript.extend(copy.deepcopy(list(replies.values())))
        return replies

    plan_round(server, 1, {"0": ids}, {"0": Layout(DIM, 1.0)}, recording)
    server.receive_join(recording("join", server.join_requests(1)))
    victim, key = ids[0], "1:0"
    plan = server.instances[key].plan
    receiver = plan.neighbours(victim)[0]
    sealed = server.instances[key].shares[(victim, receiver)]
    during = _secrets_in(clients[receiver].export_state())
    assert _try_open(sealed, plan.digest, victim, receiver, during, _publics_in(transcript))  # control
    server.receive_upload(recording("upload", server.upload_requests(1)))
    server.receive_unmask(recording("unmask", server.unmask_requests(1)), 1)
    assert server.instances[key].result is not None
    after = _secrets_in(clients[victim].export_state()) | _secrets_in(clients[receiver].export_state())
    assert not _try_open(sealed, plan.digest, victim, receiver, after, _publics_in(transcript))


# #14.3: one upload per instance, even for concurrent messages -----------------------------------------------------
def test_concurrent_upload_messages_for_one_instance_upload_at_most_once(tmp_path):
    """#14.3: Flower runs each message in a fresh process, so two copies of one upload message can run at once,
    each from the same saved state. The state is read-checked-written under an exclusive file lock: exactly one
    copy uploads, the other is refused. On main the state lived only in the Context copies: both uploaded."""
    from flwr.supercore.task_identity import TaskIdentity

    opts = join_options(tmp_path, insecure=True, ca=None)
    nc = node_config(opts)
    others = {str(n): SecAggClient(str(n), trust=TrustStore(tofu=True)) for n in (11, 12, 13, 14)}
    ctx = Context(run_id=1, node_id=int(VICTIM), node_config=nc, state=RecordDict(), run_config={})
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    try:

        class ViaFlower:  # the victim's ClientApp: every message through `handle`, with the node's Context
            def handle(self, request, contrib=None):
                msg = Message(content=to_recorddict(request), dst_node_id=int(VICTIM), message_type="query.secagg")
                reply = handle(msg, ctx, (lambda plan, m: contrib(plan)) if contrib else None)
                return from_recorddict(reply.content)

        clients = {VICTIM: ViaFlower(), **others}
        server = SecAggServer(trust=TrustStore(tofu=True))
        net = LocalNetwork(clients, {cid: contribute(cid) for cid in clients})
        plan_round(server, 1, {"0": sorted(clients)}, {"0": Layout(DIM, 1.0)}, net)
        server.receive_join(net("join", server.join_requests(1)))
        request = server.upload_requests(1)[VICTIM]
        start, results = threading.Barrier(2), []

        def one_copy():
            copy_ctx = Context(
                run_id=1, node_id=int(VICTIM), node_config=nc, state=copy.deepcopy(ctx.state), run_config={}
            )
            msg = Message(
                content=to_recorddict(copy.deepcopy(request)), dst_node_id=int(VICTIM), message_type="train.secagg"
            )
            start.wait()
            try:
                reply = handle(msg, copy_ctx, lambda plan, m: Contribution(update_of(VICTIM)))
                results.append(
                    "masked" if any(k.endswith("/masked") for k in from_recorddict(reply.content)) else "other"
                )
            except Exception as err:  # noqa: BLE001 - a refusal: Flower returns it as an error reply
                results.append(f"refused: {err}")

        threads = [threading.Thread(target=one_copy) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    assert results.count("masked") == 1, results
    assert any("already uploaded" in r for r in results), results


# #14.4: malformed replies are dropouts ------------------------------------------------------------------------------
class Garbled(SecAggClient):
    """A node whose replies are malformed: a cert whose client id is not UTF-8, or an undecodable announcement."""

    def __init__(self, cid: str, stage: str):
        super().__init__(cid, trust=TrustStore(tofu=True))
        self.stage = stage

    def handle(self, msg, contribute=None):
        reply = super().handle(msg, contribute)
        if msg["stage"] == self.stage == "register":
            bad = encode_fields(b"\xff\xfe", b"\0" * 32, b"\0" * 32, 1, b"\0" * 64)
            reply["cert"], reply["certs"] = bad, [bad]
        if msg["stage"] == self.stage == "join":
            for key in reply["instances"]:
                reply[field(key, "ann")] = b"\x00\x00\x00\x02\xff\xfe" + os.urandom(20)
            reply["instances"] = reply["instances"] + [7]
        return reply


def test_malformed_cert_bytes_make_the_node_a_dropout_not_an_exception():
    """#14.4: a certificate with a non-UTF-8 client id, an undecodable announcement or a wrongly typed field
    makes that node a dropout of its instance with the reason recorded; the others' aggregate is exact. On main
    `Cert.from_bytes` raised UnicodeDecodeError out of `receive_register` (and so out of the driver and
    `Federation.run`)."""
    honest = {str(n): SecAggClient(str(n), trust=TrustStore(tofu=True)) for n in range(10, 14)}
    clients = {**honest, "20": Garbled("20", "register"), "21": Garbled("21", "join")}
    server = SecAggServer(trust=TrustStore(tofu=True))
    net = LocalNetwork(clients, {cid: contribute(cid) for cid in clients})
    plan_round(server, 1, {"0": sorted(clients)}, {"0": Layout(DIM, 1.0)}, net)
    result = run_round(server, 1, net)
    agg = result.aggregates["0"]
    assert set(agg.survivors) == set(honest)
    assert np.allclose(agg.update_sum, sum(update_of(c) for c in honest), atol=agg.error_bound + 1e-9)
    events = " ".join(server.events)
    assert "register 20" in events and "join 21" in events
