"""Frames of a long-lived stream authenticated by a MAC, with a key agreed in its first frame.

A stream between two masters carries one frame per batch of messages, thousands a second under
load. Signing each (ed25519: about 15 us to make, 40 us to check here) cost more CPU than the
messages themselves. So only the stream's first frame is a signed envelope, as any request on the
gossip port: it says who speaks and carries a fresh X25519 public key. The key of the stream comes
from that ephemeral key and the receiver's own key (its ed25519 key seen as X25519), so it is known
to the receiver and to whoever signed the first frame, nobody else. Every later frame carries a
BLAKE3 keyed hash of its bytes (about 1 us) and a sequence number that must grow, so a frame cannot
be forged, altered, replayed within the stream or moved to another stream.

The frames are not encrypted (the signed ones were not either): issuance messages are manifests
every reader may see. A stream whose first frame has no key is read the old way, a signed envelope
per frame.
"""

from __future__ import annotations

import hmac
from typing import Any

import blake3
import nacl.bindings
import nacl.exceptions
import nacl.public

from mesh.core.codec import pack, unpack
from mesh.core.identity import PUBLIC_KEY_BYTES, Identity
from mesh.errors import ProtocolError

KEY_CONTEXT = "elton 2026-11 stream frame key v1"
TAG_BYTES = 32


def _derive(shared: bytes, ephemeral: bytes, sender: bytes, receiver: bytes) -> bytes:
    return blake3.blake3(shared + ephemeral + sender + receiver, derive_key_context=KEY_CONTEXT).digest()


def _exchange_public(ed25519_public: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise ProtocolError("bad_public_key", "not an ed25519 point") from exc


def offer(sender: Identity, receiver_public: bytes) -> tuple[bytes, bytes]:
    """For the sender of a stream: ``(ephemeral public key for the first frame, the stream's key)``."""
    ephemeral = nacl.public.PrivateKey.generate()
    try:
        shared = nacl.bindings.crypto_scalarmult(bytes(ephemeral), _exchange_public(receiver_public))
    except nacl.exceptions.CryptoError as exc:
        raise ProtocolError("bad_public_key", "a low-order point") from exc
    public = bytes(ephemeral.public_key)
    return public, _derive(shared, public, sender.public_key, receiver_public)


def answer(receiver: Identity, sender_public: bytes, ephemeral_public: Any) -> bytes:
    """For the receiver: the stream's key from the first frame's ephemeral key (signed by the sender)."""
    if not isinstance(ephemeral_public, bytes) or len(ephemeral_public) != PUBLIC_KEY_BYTES:
        raise ProtocolError("bad_stream_key", "an X25519 public key is 32 bytes")
    try:
        shared = receiver.exchange(ephemeral_public)
    except nacl.exceptions.CryptoError as exc:
        raise ProtocolError("bad_stream_key", "a low-order point") from exc
    return _derive(shared, ephemeral_public, sender_public, receiver.public_key)


class FrameMac:
    """Seals and opens the frames of one stream under its key; ``open`` also enforces growing seqs."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a stream key is 32 bytes")
        self._key = key
        self.last_seq = 0

    def _tag(self, payload: bytes) -> bytes:
        return blake3.blake3(payload, key=self._key).digest()

    def seal(self, body: Any) -> bytes:
        """The next frame: tag, then msgpack ``[seq, body]``."""
        self.last_seq += 1
        payload = pack([self.last_seq, body])
        return self._tag(payload) + payload

    def open(self, frame: bytes, max_size: int) -> Any:
        """The body of a frame of this stream; ProtocolError if it was not sealed under this key or
        its seq does not follow the last one read."""
        tag, payload = frame[:TAG_BYTES], frame[TAG_BYTES:]
        if len(tag) != TAG_BYTES or not hmac.compare_digest(tag, self._tag(payload)):
            raise ProtocolError("bad_mac")
        obj = unpack(payload, max_size)
        if not isinstance(obj, list) or len(obj) != 2:
            raise ProtocolError("malformed", "not a stream frame")
        seq, body = obj
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= self.last_seq:
            raise ProtocolError("bad_stream", "an old or missing seq")
        self.last_seq = seq
        return body
