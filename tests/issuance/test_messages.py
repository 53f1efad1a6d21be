import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.core.codec import pack, unpack
from mesh.core.identity import Identity
from mesh.core.issuance import (
    Accept,
    Accepted,
    Ballot,
    Commit,
    CommitReply,
    Entry,
    Handoff,
    HandoffDone,
    Nack,
    Prepare,
    Promise,
    manifest_hash,
    message_from_wire,
    message_to_wire,
)
from mesh.core.manifest import ChunkRef, Draft, issue
from mesh.errors import ProtocolError

HOME = Identity(b"h" * 32)
NODE = HOME.node_id
DRAFT = Draft("a/b", 3, "c" * 64, (ChunkRef("d" * 64, 3),), "alice", meta={"mode": 0o644})
MANIFEST = issue(DRAFT, 2, 1, 12.5, HOME).encode()
B = Ballot(3, 7, NODE)
ENTRY = Entry(2, B, manifest_hash(MANIFEST), MANIFEST)

ALL = [
    Commit("r1", NODE, DRAFT, None, 10.0),
    Commit("r2", NODE, DRAFT, 4, 2.5, 2),
    CommitReply("r1", "a/b", MANIFEST),
    CommitReply("r1", "a/b", error_code="conflict", error_message="at 3"),
    Prepare("a/b", B),
    Promise("a/b", B, None),
    Promise("a/b", B, ENTRY),
    Accept("a/b", ENTRY),
    Accepted("a/b", B, 2),
    Nack("a/b", B, Ballot(4, 0, NODE)),
    Handoff("a/b", 3),
    HandoffDone("a/b", 3),
]


@pytest.mark.parametrize("msg", ALL, ids=lambda m: type(m).__name__)
def test_every_message_survives_msgpack(msg):
    assert message_from_wire(unpack(pack(message_to_wire(msg)), 1 << 24)) == msg


def test_ballots_order_by_epoch_then_round_then_node():
    assert Ballot(1, 99, NODE) < Ballot(2, 0, NODE) < Ballot(2, 1, NODE)
    assert Ballot(2, 1, "0" * 40) < Ballot(2, 1, "f" * 40)


@pytest.mark.parametrize("bad", [
    None, [], {"t": "nope"}, {"t": "prepare", "key": "a//b", "ballot": [0, 0, NODE]},
    {"t": "prepare", "key": "a", "ballot": [0, -1, NODE]},
    {"t": "prepare", "key": "a", "ballot": [0, 1, "zz"]},
    {"t": "accepted", "key": "a", "ballot": [0, 1, NODE], "version": 0},
    {"t": "accept", "key": "a", "entry": [2, [0, 1, NODE], "0" * 64, MANIFEST]},  # hash mismatch
    {"t": "reply", "rid": "r", "key": "a", "manifest": b"", "code": "", "message": ""},
    {"t": "commit", "rid": "r", "origin": NODE, "draft": {"key": "a"}, "parent": None, "timeout": 1.0,
     "hops": 0},
    {"t": "commit", "rid": "r", "origin": NODE, "draft": message_to_wire(ALL[0])["draft"], "parent": None,
     "timeout": 1.0, "hops": 99},
])
def test_malformed_messages_raise_protocol_error(bad):
    with pytest.raises(ProtocolError):
        message_from_wire(bad)


@given(st.recursive(st.none() | st.integers() | st.text(max_size=5) | st.binary(max_size=5),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=5)))
def test_garbage_never_raises_anything_but_protocol_error(obj):
    for t in ("commit", "reply", "prepare", "promise", "accept", "accepted", "nack", "handoff"):
        candidate = dict(obj, t=t) if isinstance(obj, dict) else obj
        try:
            message_from_wire(candidate)
        except ProtocolError:
            pass
