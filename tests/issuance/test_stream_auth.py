"""The MAC'd frames of an issuance stream: one key on both ends, nothing forged, altered or replayed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.core import stream_auth
from mesh.core.codec import pack
from mesh.core.identity import Identity
from mesh.errors import ProtocolError

SENDER, RECEIVER, OTHER = Identity(b"s" * 32), Identity(b"r" * 32), Identity(b"o" * 32)


def pair() -> tuple[stream_auth.FrameMac, stream_auth.FrameMac]:
    ephemeral, key = stream_auth.offer(SENDER, RECEIVER.public_key)
    return stream_auth.FrameMac(key), stream_auth.FrameMac(stream_auth.answer(RECEIVER, SENDER.public_key, ephemeral))


def test_both_ends_derive_the_same_key_and_each_stream_gets_a_new_one():
    e1, k1 = stream_auth.offer(SENDER, RECEIVER.public_key)
    e2, k2 = stream_auth.offer(SENDER, RECEIVER.public_key)
    assert stream_auth.answer(RECEIVER, SENDER.public_key, e1) == k1
    assert stream_auth.answer(RECEIVER, SENDER.public_key, e2) == k2
    assert e1 != e2 and k1 != k2


def test_only_the_named_receiver_and_the_named_sender_get_the_key():
    ephemeral, key = stream_auth.offer(SENDER, RECEIVER.public_key)
    assert stream_auth.answer(OTHER, SENDER.public_key, ephemeral) != key  # another host's own key
    assert stream_auth.answer(RECEIVER, OTHER.public_key, ephemeral) != key  # a first frame signed by another


@given(st.lists(st.dictionaries(st.text(max_size=5), st.binary(max_size=50), max_size=4), min_size=1, max_size=8))
def test_frames_open_in_order_with_their_bodies(bodies):
    sender, receiver = pair()
    assert [receiver.open(sender.seal(b), 1 << 20) for b in bodies] == bodies


def test_an_altered_frame_is_refused():
    sender, receiver = pair()
    frame = bytearray(sender.seal({"ms": [1, 2, 3]}))
    frame[-1] ^= 1
    with pytest.raises(ProtocolError) as e:
        receiver.open(bytes(frame), 1 << 20)
    assert e.value.reason == "bad_mac"


def test_a_frame_of_another_stream_or_a_forged_one_is_refused():
    sender, _ = pair()
    _, receiver = pair()  # a second stream between the same two hosts: another key
    with pytest.raises(ProtocolError) as e:
        receiver.open(sender.seal({"ms": []}), 1 << 20)
    assert e.value.reason == "bad_mac"
    forged = bytes(32) + pack([1, {"ms": []}])
    with pytest.raises(ProtocolError) as e:
        receiver.open(forged, 1 << 20)
    assert e.value.reason == "bad_mac"


def test_a_replayed_or_reordered_frame_is_refused():
    sender, receiver = pair()
    first, second = sender.seal({"n": 1}), sender.seal({"n": 2})
    assert receiver.open(second, 1 << 20) == {"n": 2}
    for old in (second, first):
        with pytest.raises(ProtocolError) as e:
            receiver.open(old, 1 << 20)
        assert e.value.reason == "bad_stream"


def test_a_bad_ephemeral_key_is_refused():
    for bad in (b"short", bytes(32), "not bytes"):
        with pytest.raises(ProtocolError) as e:
            stream_auth.answer(RECEIVER, SENDER.public_key, bad)
        assert e.value.reason == "bad_stream_key"


def test_an_oversized_frame_is_refused_after_its_mac():
    sender, receiver = pair()
    with pytest.raises(ProtocolError) as e:
        receiver.open(sender.seal({"x": b"y" * 2000}), 1000)
    assert e.value.reason == "oversized"
