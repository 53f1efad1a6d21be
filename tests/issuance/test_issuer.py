"""Direct tests of one Issuer: the verbs, persistence before acknowledgement, restart, cache."""

import random
from dataclasses import replace

import pytest

from dht import Master
from mesh.core.identity import Identity
from mesh.core.issuance import Accept, Ballot, Done, Entry, Issuer, IssuerConfig, Persist, Prepare, Send
from mesh.core.issuance.messages import manifest_hash
from mesh.core.manifest import ChunkRef, Draft, Manifest, issue
from mesh.errors import Conflict, ProtocolError

ME = Identity(b"m" * 32)
PEER = Identity(b"p" * 32)
DRAFT = Draft("k", 1, "c" * 64, (ChunkRef("c" * 64, 1),), "alice")


def alone(records=()):
    iss = Issuer(ME, IssuerConfig(replicas=3), random.Random(1), records)
    iss.set_roster(0, [Master(ME.node_id)], 0.0)
    return iss


def test_single_master_issues_after_persisting_and_caches():
    iss = alone()
    iss.submit("r1", DRAFT, None, 1.0)
    effects = iss.drain()
    assert isinstance(effects[0], Persist) and isinstance(effects[-1], Done)
    done = effects[-1]
    assert done.manifest.version == 1 and done.manifest.parent == 0 and done.error is None
    assert iss.cached("k", 1) == done.manifest and iss.last_known("k") == 1
    iss.submit("r2", DRAFT, 0, 2.0)
    assert isinstance(iss.drain()[-1].error, Conflict)


def test_restart_from_records_continues_the_counter_with_a_fresh_ballot():
    iss = alone()
    records = []
    for i in range(3):
        iss.submit(f"r{i}", DRAFT, None, float(i))
        for eff in iss.drain():
            if isinstance(eff, Persist):
                records.extend(eff.records)
    again = alone(records)
    again.submit("r9", DRAFT, 3, 10.0)
    effects = again.drain()
    assert effects[-1].manifest.version == 4
    old_rounds = [r.round for r in records if type(r).__name__ == "RoundRecord"]
    new_rounds = [r.round for e in effects if isinstance(e, Persist) for r in e.records
                  if type(r).__name__ == "RoundRecord"]
    assert min(new_rounds) > max(old_rounds)


def test_home_elsewhere_gets_the_commit_and_timers_resend_then_fail():
    iss = Issuer(ME, IssuerConfig(commit_timeout=3.0, retry_interval=0.5), random.Random(1))
    iss.set_roster(0, [Master(ME.node_id), Master(PEER.node_id)], 0.0)
    iss.set_live([PEER.node_id], 0.0)
    key = next(f"k{i}" for i in range(100) if iss.home_of(f"k{i}") == PEER.node_id)
    draft = Draft(key, 1, "c" * 64, (ChunkRef("c" * 64, 1),), "alice")
    iss.submit("r1", draft, None, 0.0)
    sent = [e for e in iss.drain() if isinstance(e, Send)]
    assert [e.dest for e in sent] == [PEER.node_id]
    now, resent = 0.0, 0
    while (deadline := iss.next_deadline()) is not None:
        now = deadline
        iss.handle_timer(now)
        effects = iss.drain()
        resent += sum(isinstance(e, Send) for e in effects)
        if any(isinstance(e, Done) for e in effects):
            break
    assert now == 3.0 and resent >= 2
    assert PEER.node_id[:12] in effects[-1].error.message


def test_prepare_goes_to_the_replica_set_with_a_ballot_of_the_current_epoch():
    iss = Issuer(ME, IssuerConfig(), random.Random(1))
    iss.set_roster(4, [Master(ME.node_id), Master(PEER.node_id)], 0.0)
    iss.set_live([PEER.node_id], 0.0)
    key = next(f"k{i}" for i in range(100) if iss.home_of(f"k{i}") == ME.node_id)
    iss.submit("r1", Draft(key, 1, "c" * 64, (ChunkRef("c" * 64, 1),), "alice"), None, 0.0)
    prepares = [e for e in iss.drain() if isinstance(e, Send) and isinstance(e.message, Prepare)]
    assert [p.dest for p in prepares] == [PEER.node_id]
    assert prepares[0].message.ballot.epoch == 4 and prepares[0].message.ballot.node == ME.node_id


THIRD = Identity(b"t" * 32)


def _accept(signer: Identity, forge: bool = False):
    """A replica (THIRD) of key "k", and an Accept of version 1 whose manifest ``signer`` signed."""
    replica = Issuer(THIRD, IssuerConfig(replicas=3), random.Random(1))
    replica.set_roster(0, [Master(ME.node_id), Master(PEER.node_id), Master(THIRD.node_id)], 0.0)
    replica.set_live([ME.node_id, PEER.node_id], 0.0)
    manifest = issue(DRAFT, 1, 0, 1.0, signer)
    if forge:
        manifest = replace(manifest, author="mallory")  # signature no longer matches
    blob = manifest.encode()
    entry = Entry(1, Ballot(0, 1, signer.node_id), manifest_hash(blob), blob, "r1")
    return replica, Accept("k", entry)


def _sent(iss):
    return [type(e.message).__name__ for e in iss.drain() if isinstance(e, Send)]


def test_a_replica_takes_the_issuers_manifest_on_the_frames_signature(monkeypatch):
    """The sender is authenticated by its frame: a manifest it issued needs no second check."""
    checks = []
    real = Manifest.verify
    monkeypatch.setattr(Manifest, "verify", lambda self: (checks.append(self.version), real(self))[1])
    replica, accept = _accept(ME)
    replica.receive(ME.node_id, accept, 1.0)
    assert _sent(replica) == ["Accepted"] and checks == []


def test_a_manifest_relayed_by_another_master_is_checked_and_a_forged_one_refused():
    replica, accept = _accept(ME)  # PEER re-proposes ME's slot: checked, and it is good
    replica.receive(PEER.node_id, accept, 1.0)
    assert _sent(replica) == ["Accepted"]
    replica, forged = _accept(ME, forge=True)
    with pytest.raises(ProtocolError, match="bad_signature"):
        replica.receive(PEER.node_id, forged, 1.0)
    assert "Accepted" not in _sent(replica)


def test_replica_lists_follow_the_roster_they_were_computed_from():
    from dht.placement import Placement

    others = [Identity(bytes([i]) * 32) for i in range(1, 7)]
    iss = Issuer(ME, IssuerConfig(replicas=3), random.Random(1))
    keys = [f"r/k{i}" for i in range(200)]
    rosters = [[ME, *others[:2]], [ME, *others[:5]], [ME, others[4], others[5]]]
    for epoch, members in enumerate(rosters):
        masters = [Master(m.node_id, f"c{i % 3}") for i, m in enumerate(members)]
        iss.set_roster(epoch, masters, float(epoch))
        expected = Placement(masters, iss.config.vnodes)
        for key in keys:  # asked twice: the second answer comes from what was remembered
            assert iss.replica_set(key) == iss.replica_set(key) == expected.replicas(key, 3, "mesh")
