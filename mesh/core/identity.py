"""Host identity: an ed25519 key pair; the node id is derived from the public key.

Ids are 160 bits (the size of Kademlia ids) so placement can use the XOR metric directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import blake3
import nacl.bindings
import nacl.exceptions
import nacl.signing

from mesh.errors import ProtocolError

NODE_ID_BYTES = 20
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def node_id_of(public_key: bytes) -> str:
    """The node id of a public key: the first 160 bits of its BLAKE3 hash, in hex."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ProtocolError("bad_public_key", f"{len(public_key)} bytes")
    return blake3.blake3(public_key).digest(length=NODE_ID_BYTES).hex()


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise ProtocolError('bad_signature') unless ``signature`` signs ``message``."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        raise ProtocolError("bad_signature", "wrong length")
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError) as exc:
        raise ProtocolError("bad_signature") from exc


@dataclass(frozen=True)
class Identity:
    """A host's signing key. The runtime loads or creates the seed; the core only signs."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an ed25519 seed is 32 bytes")

    @cached_property
    def _signing_key(self) -> nacl.signing.SigningKey:  # deriving it costs more than a signature
        return nacl.signing.SigningKey(self.seed)

    @cached_property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @cached_property
    def node_id(self) -> str:
        return node_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature

    @cached_property
    def _exchange_key(self) -> bytes:
        return bytes(self._signing_key.to_curve25519_private_key())

    def exchange(self, their_x25519_public: bytes) -> bytes:
        """X25519 of this host's key (its ed25519 key seen as X25519) with a peer's public key; the
        private key stays in here. Raises nacl's CryptoError for a low-order point."""
        return nacl.bindings.crypto_scalarmult(self._exchange_key, their_x25519_public)
