import pytest

from mesh.core.codec import MAX_DATAGRAM, open_envelope, seal
from mesh.core.identity import Identity
from mesh.core.keys import validate_key
from mesh.core.manifest import ChunkRef, Draft, Manifest, chunk_hash, issue
from mesh.errors import InvalidKey, ProtocolError

ALICE = Identity(b"a" * 32)
MALLORY = Identity(b"m" * 32)


def test_envelope_round_trip_and_sender():
    env = open_envelope(seal(ALICE, "ping", 7, {"x": 1}))
    assert (env.kind, env.seq, env.body, env.sender) == ("ping", 7, {"x": 1}, ALICE.node_id)


def test_forged_envelope_is_rejected():
    data = bytearray(seal(ALICE, "ping", 7, {"x": 1}))
    data[-70] ^= 1  # inside the body/signature region
    with pytest.raises(ProtocolError):
        open_envelope(bytes(data))


def test_oversized_and_garbage_are_rejected():
    with pytest.raises(ProtocolError) as e:
        open_envelope(b"\x00" * (MAX_DATAGRAM + 1))
    assert e.value.reason == "oversized"
    with pytest.raises(ProtocolError) as e:
        open_envelope(b"\xc1\xc1")
    assert e.value.reason == "malformed"


@pytest.mark.parametrize("key", ["a", "a/b/c", "ü/ß", "x" * 1024])
def test_valid_keys(key):
    assert validate_key(key) == key


@pytest.mark.parametrize("key,why", [("", "empty"), ("a//b", "empty"), ("a/./b", "'.'"),
                                     ("../a", "'..'"), ("a\x00b", "NUL"), ("x" * 1025, "1025"),
                                     ("/a", "empty"), ("a/", "empty")])
def test_invalid_keys_name_the_rule(key, why):
    with pytest.raises(InvalidKey, match=why):
        validate_key(key)


def test_manifest_signature_covers_everything():
    data = b"hello"
    draft = Draft(key="k", size=5, content_hash=chunk_hash(data), chunks=(ChunkRef(chunk_hash(data), 5),),
                  author=ALICE.node_id)
    m = issue(draft, version=3, parent=2, now=12.5, issuer=ALICE)
    again = Manifest.decode(m.encode())
    assert again == m and again.issuer == ALICE.node_id
    forged = Manifest.from_wire({**m.to_wire(), "version": 4})
    with pytest.raises(ProtocolError):
        forged.verify()


def test_manifest_wire_form_has_every_field():
    from dataclasses import fields

    m = issue(Draft(key="k", size=0, content_hash="0" * 64, chunks=(), author="a"), 1, 0, 1.0, ALICE)
    assert set(m.to_wire()) == {f.name for f in fields(Manifest)}
