"""The wire envelope: msgpack, a version byte, signed by the sender.

    envelope = msgpack([VERSION, kind, sender_public_key, seq, body, signature])
    signature = ed25519(sender, msgpack([VERSION, kind, sender_public_key, seq, body]))

``seq`` is strictly increasing per sender (its incarnation in the high bits, a counter in the
low bits) so receivers can reject replays with a small window. Decoding checks size, shape and
signature; admission and replay checks belong to the receiving core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from mesh.core.identity import Identity, node_id_of, verify
from mesh.errors import ProtocolError

VERSION = 1
MAX_DATAGRAM = 1400  # stays under a typical path MTU; larger state goes over TCP push-pull
MAX_STREAM_MESSAGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Envelope:
    kind: str
    sender_public_key: bytes
    seq: int
    body: Any

    @property
    def sender(self) -> str:
        return node_id_of(self.sender_public_key)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, max_size: int) -> Any:
    """Decode msgpack from a peer with every buffer limited; errors become ProtocolError."""
    if len(data) > max_size:
        raise ProtocolError("oversized", f"{len(data)} > {max_size} bytes")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_bin_len=max_size,
            max_str_len=max_size,
            max_array_len=max_size // 2 + 1,
            max_map_len=max_size // 4 + 1,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError("malformed", type(exc).__name__) from exc


def seal(identity: Identity, kind: str, seq: int, body: Any) -> bytes:
    """Encode and sign one message."""
    head = [VERSION, kind, identity.public_key, seq, body]
    return pack(head + [identity.sign(pack(head))])


def open_envelope(data: bytes, max_size: int = MAX_DATAGRAM) -> Envelope:
    """Decode and verify one message; raise ProtocolError naming why it is dropped."""
    obj = unpack(data, max_size)
    if not isinstance(obj, list) or len(obj) != 6:
        raise ProtocolError("malformed", "not an envelope")
    version, kind, public_key, seq, body, signature = obj
    if version != VERSION:
        raise ProtocolError("bad_version", repr(version)[:20])
    if not isinstance(kind, str) or not isinstance(public_key, bytes) or not isinstance(signature, bytes):
        raise ProtocolError("malformed", "bad field types")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("malformed", "bad seq")
    verify(public_key, pack([version, kind, public_key, seq, body]), signature)
    return Envelope(kind=kind, sender_public_key=public_key, seq=seq, body=body)
