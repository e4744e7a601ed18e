"""Adversaries: colluding clients, a server that lies or replays, forged messages, overflow, key rotation."""

import copy
import dataclasses

import numpy as np
import pytest
from scipy import stats

from dblocks.privacy.secagg import Policy, ProtocolRefusal, SecAggClient, ThresholdError, shamir
from dblocks.privacy.secagg.keys import (
    Announcement,
    Identity,
    new_x25519,
    pair_seed,
    self_seed_commitment,
    x25519_public,
)
from dblocks.privacy.secagg.messages import field
from dblocks.privacy.secagg.prg import expand_mask

TEN = Policy(dropout_fraction=0.3)  # n = 10: complete graph, k = 9, t = 6


def upload_round(fed, round_=1, drops=None):
    """Run a round up to (and including) the upload stage; return the unmask requests the server would send."""
    for (r, stage), ids in (drops or {}).items():
        fed.net.drop.setdefault((r, stage), set()).update(ids)
    server = fed.server
    joins = server.join_requests(round_)
    if joins:
        server.receive_join(fed.net("join", joins))
    server.receive_upload(fed.net("upload", server.upload_requests(round_)))
    return server


def key_of(fed, round_=1, block="0"):
    return f"{round_}:{block}"


# collusion ----------------------------------------------------------------------------------------------------
def test_t_minus_1_colluders_cannot_rebuild_an_honest_clients_secrets_or_unmask_its_input(federation):
    fed = federation(10, 4096, policy=TEN, seed=20)
    fed.start()
    server = fed.server
    server.receive_join(fed.net("join", server.join_requests(1)))
    key, victim = key_of(fed), "c000"
    inst = server.instances[key]
    plan = inst.plan
    colluders = list(plan.neighbours(victim))[: plan.threshold - 1]
    # the adversary controls the colluders: it keeps their single-use masking keys, which honest clients erase
    kept = {c: fed.net.clients[c].instances[key].mask_private for c in colluders}
    server.receive_upload(fed.net("upload", server.upload_requests(1)))
    # everything the colluders hold about the victim: t-1 shares of its masking key and of its self-mask seed
    rows = np.stack([fed.net.clients[c].instances[key].held[victim] for c in colluders])
    guess = shamir.reconstruct([plan.x(c) for c in colluders], rows)
    ann = inst.announcements[victim]
    as_bytes = [g.astype("<u2").tobytes() if g.max() < 2**16 else None for g in (guess[:16], guess[16:])]
    assert as_bytes[0] is None or x25519_public(as_bytes[0]) != ann.mask_public
    assert as_bytes[1] is None or self_seed_commitment(plan.digest, victim, as_bytes[1]) != ann.seed_commitment
    # server + colluders strip every mask they can compute from the victim's masked input ...
    quant = plan.quant
    residual = inst.masked[victim] - quant.encode(fed.inputs[(1, victim)])
    for c, private in kept.items():
        seed = pair_seed(private, ann.mask_public, plan.digest, c, victim)
        mask = expand_mask(seed, quant.length, quant.dtype)
        residual = residual + mask if c < victim else residual - mask  # the victim subtracted/added it
    residual &= quant.dtype.type(quant.modulus_mask)
    # ... and what is left is still uniform noise: the self mask and the masks with honest neighbours
    counts = np.bincount((residual & 0xFF).astype(np.int64), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    # the server, given only the colluders' reveals, cannot rebuild the self-mask seed either
    inst.survivors = sorted(inst.masked)
    inst.reveals = {c: {victim: ("b", fed.net.clients[c].instances[key].held[victim][16:])} for c in colluders}
    with pytest.raises(ThresholdError, match="needed"):
        server._rebuild(inst, victim, "b")


def test_honest_helpers_reveal_one_share_kind_per_peer_so_a_split_lie_cannot_get_both(federation):
    """Default mode: the server tells half of v's neighbours that v survived and the other half that v dropped.
    Each honest helper reveals one kind for v; with 2t > k no kind reaches t twice."""
    fed = federation(10, 32, policy=TEN, seed=21)
    fed.start()
    server = upload_round(fed)
    key = key_of(fed)
    inst = server.instances[key]
    plan, victim = inst.plan, "c004"
    requests = server.unmask_requests(1)
    helpers = [c for c in plan.neighbours(victim)]
    told_dropped = helpers[: len(helpers) // 2]
    for c in told_dropped:  # the lie: 'victim dropped' (everything else as honest)
        survivors = [s for s in requests[c][field(key, "survivors")] if s != victim]
        requests[c][field(key, "survivors")] = survivors
    replies = fed.net("unmask", {c: requests[c] for c in helpers})
    kinds = {"b": 0, "e": 0}
    for reply in replies.values():
        got = dict(zip(reply[field(key, "peers")], reply[field(key, "kinds")]))
        kinds[got[victim]] += 1
    assert kinds["b"] + kinds["e"] <= plan.degree
    assert min(kinds.values()) < plan.threshold  # the server cannot rebuild both b_victim and e_victim
    assert 2 * plan.threshold > plan.degree


def test_double_reveal_refused_and_identical_retry_served_from_cache(federation):
    fed = federation(10, 32, policy=TEN, seed=22)
    fed.start()
    server = upload_round(fed)
    key = key_of(fed)
    requests = server.unmask_requests(1)
    helper = "c001"
    client = fed.net.clients[helper]
    first = client.unmask(copy.deepcopy(requests[helper]))
    again = client.unmask(copy.deepcopy(requests[helper]))
    assert again[field(key, "kinds")] == first[field(key, "kinds")]
    assert np.array_equal(again[field(key, "shares")], first[field(key, "shares")])
    lie = copy.deepcopy(requests[helper])
    lie[field(key, "survivors")] = [s for s in lie[field(key, "survivors")] if s != "c002"]
    with pytest.raises(ProtocolRefusal, match="second, different unmask"):
        client.unmask(lie)


def test_server_claiming_a_client_dropped_is_refused_by_that_client(federation):
    fed = federation(10, 32, policy=TEN, seed=23)
    fed.start()
    server = upload_round(fed)
    key = key_of(fed)
    req = server.unmask_requests(1)["c003"]
    req[field(key, "survivors")] = [s for s in req[field(key, "survivors")] if s != "c003"]
    with pytest.raises(ProtocolRefusal, match="claims c003 dropped"):
        fed.net.clients["c003"].unmask(req)


def test_consistency_mode_refuses_a_server_showing_different_survivor_views(federation):
    fed = federation(10, 32, policy=TEN, consistency=True, seed=24)
    fed.start()
    server = upload_round(fed)
    key = key_of(fed)
    inst = server.instances[key]
    confirms = server.confirm_requests(1)
    ids = sorted(confirms)
    half_a, half_b = ids[:5], ids[5:]
    victim = half_b[0]
    for c in half_a:  # half of the clients are told the victim dropped
        confirms[c][field(key, "survivors")] = [s for s in confirms[c][field(key, "survivors")] if s != victim]
    replies = fed.net("confirm", confirms)
    # the victim's half signs the true view, the other half a view without the victim: neither has T signatures
    assert len(replies) == 10
    server.receive_confirm({c: replies[c] for c in half_b})  # only these match the server's stored view
    assert len(inst.confirmations) == 5 < inst.plan.confirm_threshold
    requests = server.unmask_requests(1)
    assert requests == {} and "confirmations" in server.events[-1]
    # a server that forwards the half_a signatures to clients of the true view is refused (bad signatures)
    forged = {}
    for c in half_b:
        msg = {
            "stage": "unmask",
            "session": server.session,
            "round": 1,
            "instances": [key],
            field(key, "announced"): list(inst.announced),
            field(key, "survivors"): list(inst.survivors),
            field(key, "signers"): half_a + half_b[:1],
            field(key, "signatures"): [replies[s][field(key, "confirm")] for s in half_a + half_b[:1]],
        }
        forged[c] = msg
    with pytest.raises(ProtocolRefusal, match="bad signature|differs from the one this client confirmed"):
        fed.net.clients[half_b[1]].unmask(forged[half_b[1]])
    # and a client that confirmed one view refuses to unmask under another
    other = copy.deepcopy(forged[half_b[1]])
    other[field(key, "survivors")] = [s for s in inst.survivors if s != half_b[2]]
    with pytest.raises(ProtocolRefusal):
        fed.net.clients[half_b[1]].unmask(other)


def test_consistency_mode_local_check_blocks_isolating_a_client(federation):
    """Sparse graph: the server excludes all of the victim's neighbours from S (claims they dropped) to isolate
    it; the victim sees fewer than t surviving neighbours and refuses; so does the server's own check."""
    fed = federation(30, 16, consistency=True, seed=25)
    fed.start()
    server = upload_round(fed)
    key = key_of(fed)
    inst = server.instances[key]
    victim = "c000"
    cut = set(inst.plan.neighbours(victim))
    req = {
        "stage": "confirm",
        "session": server.session,
        "round": 1,
        "instances": [key],
        field(key, "announced"): list(inst.announced),
        field(key, "survivors"): [s for s in inst.announced if s not in cut],
    }
    with pytest.raises(ProtocolRefusal, match="neighbours survived"):
        fed.net.clients[victim].confirm(req)


# forged and replayed messages ---------------------------------------------------------------------------------
def test_forged_or_substituted_announcements_are_refused(federation):
    fed = federation(5, 16, seed=26)
    fed.start()
    server = fed.server
    server.receive_join(fed.net("join", server.join_requests(1)))
    requests = server.upload_requests(1)
    key = key_of(fed)
    target = "c000"
    peer = fed.server.plans(1)[0].neighbours(target)[0]
    ann = Announcement.from_bytes(requests[target][field(key, "ann", peer)])
    # the server substitutes its own masking key (to compute the pairwise mask itself)
    evil = Identity(peer)
    swapped = Announcement(
        peer, ann.plan_digest, x25519_public(new_x25519()), ann.seed_commitment, ann.seal_public, ann.signature
    )
    req = copy.deepcopy(requests[target])
    req[field(key, "ann", peer)] = swapped.to_bytes()
    with pytest.raises(ProtocolRefusal, match="bad signature"):
        fed.net.clients[target].upload(req, fed.net.contribute[target])
    # ... or signs it with a key that is not the pinned identity of that peer
    resigned = Announcement(
        peer,
        ann.plan_digest,
        swapped.mask_public,
        ann.seed_commitment,
        ann.seal_public,
        evil.sign(swapped.signed_bytes()),
    )
    req[field(key, "ann", peer)] = resigned.to_bytes()
    with pytest.raises(ProtocolRefusal, match="bad signature"):
        fed.net.clients[target].upload(req, fed.net.contribute[target])
    # ... or sends a prekey for the peer under a different identity (with next round's announcement)
    key2 = key_of(fed, 2)
    fed.start(2)
    requests = server.upload_requests(1)
    req = copy.deepcopy(requests[target])
    assert field(key2, "cert", peer) in req
    req[field(key2, "cert", peer)] = evil.cert(2, x25519_public(new_x25519())).to_bytes()
    with pytest.raises(ProtocolRefusal, match="differs from the pinned"):
        fed.net.clients[target].upload(req, fed.net.contribute[target])
    # the untouched request still works: refusals changed nothing
    fed.net.clients[target].upload(requests[target], fed.net.contribute[target])


def test_replayed_messages_are_refused(federation):
    fed = federation(5, 16, seed=27)
    fed.start()
    fed.run(1)
    server = fed.server
    server.receive_join(fed.net("join", server.join_requests(2)))  # nothing to join in steady state
    requests = server.upload_requests(2)
    target = "c001"
    key1, key2 = key_of(fed, 1), key_of(fed, 2)
    client = fed.net.clients[target]
    # a round-1 share replayed into round 2 does not authenticate (bound to the plan digest)
    peer = server.plans(2)[0].neighbours(target)[0]
    req = copy.deepcopy(requests[target])
    req[field(key2, "share", peer)] = server.instances[key1].shares[(peer, target)]
    with pytest.raises(ProtocolRefusal, match="does not authenticate"):
        client.upload(req, fed.net.contribute[target])
    # a round-1 announcement replayed as round 2's
    req = copy.deepcopy(requests[target])
    req[field(key2, "ann", peer)] = server.instances[key1].announcements[peer].to_bytes()
    with pytest.raises(ProtocolRefusal, match="another client or plan"):
        client.upload(req, fed.net.contribute[target])
    # the genuine request is accepted once; a replay of it is refused (a masked input is sent once)
    client.upload(copy.deepcopy(requests[target]), fed.net.contribute[target])
    with pytest.raises(ProtocolRefusal, match="already uploaded"):
        client.upload(copy.deepcopy(requests[target]), fed.net.contribute[target])
    # a join for an old round is refused
    old_join = {
        "stage": "join",
        "session": server.session,
        "round": 1,
        "instances": [key1],
        field(key1, "plan"): server.instances[key1].plan.to_bytes(),
    }
    with pytest.raises(ProtocolRefusal, match="replay|already used"):
        client.join(old_join)
    # a message for another session is refused
    with pytest.raises(ProtocolRefusal, match="another session"):
        client.upload({**requests[target], "session": b"\0" * 16}, fed.net.contribute[target])


def test_plans_weaker_than_the_client_policy_are_refused(federation):
    fed = federation(10, 16, policy=TEN, seed=28)
    fed.start()
    server = fed.server
    joins = server.join_requests(1)
    key = key_of(fed)
    plan = server.instances[key].plan
    client = fed.net.clients["c000"]
    for change, match in [
        ({"threshold": 3}, "unsafe"),
        ({"min_survivors": 2}, "min_survivors"),
        ({"quant": dataclasses.replace(plan.quant, bits=8)}, "overflow"),
    ]:
        weak = dataclasses.replace(plan, **change)
        req = copy.deepcopy(joins["c000"])
        req[field(key, "plan")] = weak.to_bytes()
        with pytest.raises(ProtocolRefusal, match=match):
            client.join(req)
    client.join(joins["c000"])


# overflow ------------------------------------------------------------------------------------------------------
def test_a_client_sending_out_of_range_words_makes_the_aggregate_fail_not_wrap(federation):
    class RogueClient(SecAggClient):
        def _mask(self, inst, acc, peer_keys):  # skips the bound: the largest positive word in coordinate 0
            acc = acc.copy()
            acc[0] = acc.dtype.type((1 << (inst.plan.quant.bits - 1)) - 1)
            return super()._mask(inst, acc, peer_keys)

    fed = federation(5, 16, seed=29)
    honest = fed.net.clients["c002"]
    fed.net.clients["c002"] = RogueClient("c002", honest.identity, trust=honest.trust)
    fed.start()
    result = fed.run(1, plan_next=False)
    assert result.aggregates == {} and "out of range" in result.failures["0"]


def test_an_unclipped_update_is_refused_by_its_own_client_and_counts_as_a_dropout(federation):
    fed = federation(5, 16, seed=30)
    fed.inputs[(1, "c001")] = np.ones(16)  # norm 4 > clip norm 1
    fed.start()
    result = fed.run(1, plan_next=False)
    assert ("c001", "upload") in [(c, stage) for c, stage, _ in fed.net.refusals]
    assert any("clip it first" in why for _, _, why in fed.net.refusals)
    agg = result.aggregates["0"]
    assert agg.dropped_at_upload == ("c001",)
    assert np.abs(agg.update_sum - fed.expected_sum(1, agg.survivors)).max() <= agg.error_bound


def test_a_second_instance_in_the_same_round_is_refused(federation):
    """Re-running a block in the same round over a smaller cohort would let the server subtract the two sums
    and recover the missing client's input: a client uploads at most one masked input per round."""
    fed = federation(6, 16, policy=Policy(dropout_fraction=0.2), seed=31)
    fed.start()
    fed.run(1, plan_next=False)
    from dblocks.privacy.secagg import Layout

    members = sorted(fed.net.clients)[:5]
    fed.server.receive_register(fed.net("register", fed.server.register_requests(members, 1)))
    retry = fed.server.add_plan(1, "0.retry", members, Layout(16, 1.0))
    joins = fed.server.join_requests(1)
    assert set(joins) == set(retry.cohort)
    for cid, req in joins.items():
        with pytest.raises(ProtocolRefusal, match="replay"):
            fed.net.clients[cid].join(req)


def test_a_restarted_server_cannot_make_a_client_upload_the_same_round_again(federation):
    from dblocks.privacy.secagg import Layout, SecAggServer

    fed = federation(5, 16, seed=32)
    fed.start()
    fed.run(1, plan_next=False)
    fresh = SecAggServer(policy=fed.server.policy)  # new session, e.g. after a crash
    fed.server = fresh
    fed.start(1)  # registers everyone again and plans round 1 of the new session
    for cid, req in fresh.join_requests(1).items():
        with pytest.raises(ProtocolRefusal, match="replay"):
            fed.net.clients[cid].join(req)
    fresh.add_plan(2, "0", sorted(fed.net.clients), Layout(16, 1.0))  # continuing past round 1 works
    result = fed.run(2, plan_next=False)
    assert result.failures == {} and result.aggregates["0"].count == 5
