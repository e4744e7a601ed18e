"""Across rounds: exchange counts (steady state = 2), re-keying after being declared dropped, per-round
prekeys, and client state that survives being serialised between every message (as in a Flower Context)."""

import copy

import numpy as np
import pytest

from dblocks.privacy.secagg import Policy, ProtocolRefusal, SecAggClient
from dblocks.privacy.secagg.keys import pair_seed, x25519_public
from dblocks.privacy.secagg.messages import field

TEN = Policy(dropout_fraction=0.3)


@pytest.mark.parametrize("consistency,steady", [(False, ["upload", "unmask"]), (True, ["upload", "confirm", "unmask"])])
def test_steady_state_rounds_use_exactly_two_client_exchanges(federation, consistency, steady):
    fed = federation({"0": 6, "1": 7}, 256, consistency=consistency, seed=40)
    fed.start()
    rounds = 4
    for r in range(1, rounds + 1):
        result = fed.run(r, plan_next=r < rounds)
        assert result.failures == {}
    ids = sorted(fed.net.clients)
    for cid in ids:  # round 1: register (once per session) and join, then the round itself
        assert fed.net.stages[(1, cid)] == ["register", "join"] + steady
    for r in range(2, rounds + 1):
        for cid in ids:
            assert fed.net.stages[(r, cid)] == steady, (r, cid, fed.net.stages[(r, cid)])
            assert fed.net.exchanges[(r, cid)] == len(steady)
    # what a steady-state upload costs on the wire: the masked words plus ~k next-round shares and one announcement
    plan = fed.server.plans(3)[0]
    words = plan.quant.length * plan.quant.dtype.itemsize
    for cid in fed.cohorts["0"]:
        assert fed.net.bytes_up[(3, cid)] < words + plan.degree * 400 + 2000


def test_client_declared_dropped_must_rekey_before_it_takes_part_again(federation):
    fed = federation(10, 32, policy=TEN, seed=41)
    ids = sorted(fed.net.clients)
    victim = ids[4]
    fed.start()
    fed.run(1)
    announced_r2 = fed.server.instances["2:0"].announcements[victim]
    fed.net.drop[(2, "upload")] = {victim}
    r2 = fed.run(2)
    assert r2.aggregates["0"].dropped_at_upload == (victim,)
    # the server rebuilt the victim's round-2 masking key (that is what recovering from its dropout takes)
    inst2 = fed.server.instances["2:0"]
    rebuilt = fed.server._rebuild(inst2, victim, "e")
    assert x25519_public(rebuilt) == announced_r2.mask_public
    # the victim never got the round-2 upload request, so it still holds those keys for now
    assert fed.net.clients[victim].instances["2:0"].status == "announced"
    # round 3: the victim announced nothing (its announcement rode on the upload it missed), so it cannot upload
    server = fed.server
    assert victim not in server.instances["3:0"].announcements
    requests_without_join = server.upload_requests(3)
    assert victim not in requests_without_join  # the server does not even ask
    forged = copy.deepcopy(requests_without_join[ids[0]])
    with pytest.raises(ProtocolRefusal, match="must join"):
        fed.net.clients[victim].upload({**forged, "instances": ["3:0"]}, fed.net.contribute[victim])
    server.instances["3:0"].announced = None  # undo the freeze done by the probe above
    # with a join (fresh key pair, fresh shares) it is back in the sum
    r3 = fed.run(3, plan_next=False)
    assert fed.net.stages[(3, victim)] == ["join", "upload", "unmask"]
    assert victim in r3.aggregates["0"].survivors
    # joining round 3 erased the never-used round-2 keys; a late or replayed round-2 upload request is refused
    stale = fed.net.clients[victim].instances["2:0"]
    assert stale.status == "abandoned" and stale.mask_private is None and stale.self_seed is None
    late = {
        "stage": "upload",
        "session": server.session,
        "round": 2,
        "instances": ["2:0"],
        field("2:0", "plan"): inst2.plan.to_bytes(),
    }
    with pytest.raises(ProtocolRefusal, match="abandoned"):
        fed.net.clients[victim].upload(late, fed.net.contribute[victim])
    fresh = fed.server.instances["3:0"].announcements[victim]
    assert fresh.mask_public != announced_r2.mask_public
    # the rebuilt round-2 key says nothing about round 3: it does not give any round-3 pairwise seed
    peer = fed.server.plans(3)[0].neighbours(victim)[0]
    peer_pub = fed.server.instances["3:0"].announcements[peer].mask_public
    stale = pair_seed(rebuilt, peer_pub, fed.server.plans(3)[0].digest, victim, peer)
    genuine_pub = fresh.mask_public
    assert x25519_public(rebuilt) != genuine_pub and len(stale) == 32
    np.testing.assert_allclose(
        r3.aggregates["0"].update_sum,
        fed.expected_sum(3, r3.aggregates["0"].survivors),
        atol=r3.aggregates["0"].error_bound,
    )


def test_prekeys_rotate_every_round_and_are_erased_after_use(federation):
    """Replaces the manual channel-key rotation: shares are sealed to a prekey per round (#14.2 forward secrecy),
    which the client erases once its upload opened that round's shares; two prekeys for one round are refused."""
    fed = federation(5, 16, seed=42)
    fed.start()
    fed.run(1)
    client = fed.net.clients["c002"]
    assert 1 not in client.prekeys and {2, 3}.issubset(client.prekeys)
    certs = [fed.server.trust.cert("c002", r) for r in (2, 3)]
    assert certs[0].channel_public != certs[1].channel_public
    forged = client.identity.cert(2, x25519_public(client.prekeys[3]))  # a second prekey for round 2
    with pytest.raises(ProtocolRefusal, match="two different prekeys"):
        fed.server.trust.accept_cert(forged)
    fed.run(2)
    r3 = fed.run(3, plan_next=False)
    assert r3.failures == {}
    agg = r3.aggregates["0"]
    assert np.abs(agg.update_sum - fed.expected_sum(3, agg.survivors)).max() <= agg.error_bound
    assert all(r > 3 for r in client.prekeys)


class PersistedClient:
    """Holds only bytes between messages and rebuilds the client for each one, as a Flower ClientApp does."""

    def __init__(self, client: SecAggClient):
        self.state = client.export_state()
        self.client_id = client.client_id

    def handle(self, msg, contribute=None):
        client = SecAggClient.from_state(self.state)
        reply = client.handle(msg, contribute)
        self.state = client.export_state()
        return reply


def test_client_state_survives_serialisation_between_every_message(federation):
    fed = federation(6, 32, policy=Policy(dropout_fraction=0.2), seed=43)
    fed.net.clients = {cid: PersistedClient(c) for cid, c in fed.net.clients.items()}
    ids = sorted(fed.net.clients)
    fed.start()
    fed.run(1)
    fed.net.drop[(2, "upload")] = {ids[0]}
    r2 = fed.run(2)
    r3 = fed.run(3, plan_next=False)
    for result in (r2, r3):
        agg = result.aggregates["0"]
        assert np.abs(agg.update_sum - fed.expected_sum(result.round, agg.survivors)).max() <= agg.error_bound
    # a retried identical unmask after a restore is answered from the persisted cache
    key = "3:0"
    helper = ids[1]
    req = {
        "stage": "unmask",
        "session": fed.server.session,
        "round": 3,
        "instances": [key],
        field(key, "announced"): list(fed.server.instances[key].announced),
        field(key, "survivors"): list(fed.server.instances[key].survivors),
    }
    first = fed.net.clients[helper].handle(copy.deepcopy(req))
    assert np.array_equal(
        first[field(key, "shares")], fed.net.clients[helper].handle(copy.deepcopy(req))[field(key, "shares")]
    )
