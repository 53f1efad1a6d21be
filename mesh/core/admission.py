"""Admission to the mesh: the admin key, join tokens, certificates and revocations.

The host that creates a mesh holds its admin key (a separate ed25519 key). A join token proves
that the admin handed it out: it names the mesh (the admin key's id) and carries a nonce, an
expiry and a MAC keyed by the admin seed, so only the admin host can check it and nothing is
stored per token. A host that presents a valid token over TCP receives a certificate: its
public key, cluster and role, signed by the admin key. Certificates and revocations travel by
gossip; a message whose sender has no valid certificate, or a revoked one, is dropped.

Pure functions and state: no files, no clock, no randomness of its own (the caller passes a nonce).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import blake3

from mesh.core.codec import pack
from mesh.core.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, node_id_of, verify
from mesh.errors import ProtocolError, Unauthorized

TOKEN_PREFIX = "ELTON1"
TOKEN_NONCE_BYTES = 8
TOKEN_MAC_BYTES = 16
MAX_CLUSTER_NAME = 64
MAX_ROLE_NAME = 32
MAX_CERTIFICATES = 10_000  # a bound on admission state received from peers
MAX_REVOCATIONS = 10_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NODE_ID = re.compile(r"^[0-9a-f]{40}$")
_TOKEN = re.compile(r"^ELTON1-([0-9a-f]{40})-([0-9]{1,12})-([0-9a-f]{16})-([0-9a-f]{32})$")


def check_name(value: object, limit: int, what: str) -> str:
    """A cluster or role name: short, ASCII letters, digits, '.', '_', '-'."""
    if not isinstance(value, str) or not 0 < len(value) <= limit or not _NAME.match(value):
        raise ValueError(f"bad {what} name {str(value)[:40]!r}")
    return value


def is_node_id(value: object) -> bool:
    return isinstance(value, str) and bool(_NODE_ID.match(value))


def _finite_time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"bad time {value!r}")
    return float(value)


@dataclass(frozen=True)
class Certificate:
    """The admin's statement that ``public_key`` belongs to the mesh, in ``cluster``, as ``role``."""

    public_key: bytes
    cluster: str
    role: str
    issued_at: float
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_BYTES:
            raise ValueError("certificate public key must be 32 bytes")
        check_name(self.cluster, MAX_CLUSTER_NAME, "cluster")
        check_name(self.role, MAX_ROLE_NAME, "role")
        _finite_time(self.issued_at)
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise ValueError("certificate signature must be 64 bytes")

    @property
    def node_id(self) -> str:
        return node_id_of(self.public_key)

    def signed_part(self) -> bytes:
        return _cert_payload(self.public_key, self.cluster, self.role, self.issued_at)

    def to_wire(self) -> list[Any]:
        return [self.public_key, self.cluster, self.role, self.issued_at, self.signature]

    @classmethod
    def from_wire(cls, obj: object) -> Certificate:
        if not isinstance(obj, list) or len(obj) != 5:
            raise ProtocolError("bad_certificate", "not a certificate")
        try:
            return cls(*obj)
        except (ValueError, TypeError) as exc:
            raise ProtocolError("bad_certificate", str(exc)) from exc


@dataclass(frozen=True)
class Revocation:
    """The admin's statement that ``node_id`` is no longer in the mesh."""

    node_id: str
    revoked_at: float
    signature: bytes

    def __post_init__(self) -> None:
        if not is_node_id(self.node_id):
            raise ValueError(f"bad node id {str(self.node_id)[:50]!r}")
        _finite_time(self.revoked_at)
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise ValueError("revocation signature must be 64 bytes")

    def signed_part(self) -> bytes:
        return pack(["elton-revocation-v1", self.node_id, self.revoked_at])

    def to_wire(self) -> list[Any]:
        return [self.node_id, self.revoked_at, self.signature]

    @classmethod
    def from_wire(cls, obj: object) -> Revocation:
        if not isinstance(obj, list) or len(obj) != 3:
            raise ProtocolError("bad_revocation", "not a revocation")
        try:
            return cls(*obj)
        except (ValueError, TypeError) as exc:
            raise ProtocolError("bad_revocation", str(exc)) from exc


def _cert_payload(public_key: bytes, cluster: str, role: str, issued_at: float) -> bytes:
    return pack(["elton-certificate-v1", public_key, cluster, role, float(issued_at)])


def issue_certificate(admin: Identity, public_key: bytes, cluster: str, role: str, now: float) -> Certificate:
    """Sign a certificate for ``public_key`` with the admin key."""
    signature = admin.sign(_cert_payload(public_key, cluster, role, now))
    return Certificate(public_key, cluster, role, float(now), signature)


def verify_certificate(cert: Certificate, admin_public_key: bytes) -> None:
    """Raise ProtocolError('bad_certificate') unless the admin key signed ``cert``."""
    try:
        verify(admin_public_key, cert.signed_part(), cert.signature)
    except ProtocolError as exc:
        raise ProtocolError("bad_certificate", "not signed by the mesh admin") from exc


def issue_revocation(admin: Identity, node_id: str, now: float) -> Revocation:
    unsigned = Revocation(node_id, float(now), b"\0" * SIGNATURE_BYTES)
    return Revocation(node_id, float(now), admin.sign(unsigned.signed_part()))


def verify_revocation(rev: Revocation, admin_public_key: bytes) -> None:
    try:
        verify(admin_public_key, rev.signed_part(), rev.signature)
    except ProtocolError as exc:
        raise ProtocolError("bad_revocation", "not signed by the mesh admin") from exc


# -- join tokens ------------------------------------------------------------------------------

@dataclass(frozen=True)
class JoinToken:
    """A parsed join token. ``mesh_id`` lets the joiner check who signs its certificate."""

    mesh_id: str
    expires_at: int
    nonce: bytes
    mac: bytes

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}-{self.mesh_id}-{self.expires_at}-{self.nonce.hex()}-{self.mac.hex()}"


def _token_mac(admin: Identity, mesh_id: str, expires_at: int, nonce: bytes) -> bytes:
    key = blake3.blake3(admin.seed, derive_key_context="elton 2024 join token mac v1").digest()
    return blake3.blake3(pack([mesh_id, expires_at, nonce]), key=key).digest(length=TOKEN_MAC_BYTES)


def make_token(admin: Identity, nonce: bytes, expires_at: float) -> str:
    """A join token valid until ``expires_at`` (seconds, the caller's wall clock)."""
    if len(nonce) != TOKEN_NONCE_BYTES:
        raise ValueError(f"a token nonce is {TOKEN_NONCE_BYTES} bytes")
    mesh_id = admin.node_id
    expires = int(expires_at)
    return str(JoinToken(mesh_id, expires, nonce, _token_mac(admin, mesh_id, expires, nonce)))


def parse_token(text: str) -> JoinToken:
    """Parse a token's shape (anyone can); raise Unauthorized naming what is wrong."""
    match = _TOKEN.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise Unauthorized("malformed join token (expected ELTON1-<mesh>-<expiry>-<nonce>-<mac>)")
    mesh_id, expires, nonce, mac = match.groups()
    return JoinToken(mesh_id, int(expires), bytes.fromhex(nonce), bytes.fromhex(mac))


def check_token(admin: Identity, text: str, now: float) -> JoinToken:
    """Accept a token this admin made and that has not expired; raise Unauthorized otherwise."""
    token = parse_token(text)
    if token.mesh_id != admin.node_id:
        raise Unauthorized("join token is for another mesh")
    expected = _token_mac(admin, token.mesh_id, token.expires_at, token.nonce)
    if not _equal(expected, token.mac):
        raise Unauthorized("join token is not valid")
    if now > token.expires_at:
        raise Unauthorized("join token has expired")
    return token


def _equal(a: bytes, b: bytes) -> bool:
    diff = len(a) ^ len(b)
    for x, y in zip(a, b, strict=False):
        diff |= x ^ y
    return diff == 0


# -- the state every member keeps ---------------------------------------------------------------

@dataclass
class AdmissionState:
    """Who is admitted: certificates and revocations signed by the admin key of one mesh."""

    admin_public_key: bytes
    certificates: dict[str, Certificate] = field(default_factory=dict)
    revocations: dict[str, Revocation] = field(default_factory=dict)

    @property
    def mesh_id(self) -> str:
        return node_id_of(self.admin_public_key)

    def status(self, node_id: str) -> str:
        """'admitted', 'revoked' or 'unadmitted' (the drop reasons of the runtime)."""
        if node_id in self.revocations:
            return "revoked"
        return "admitted" if node_id in self.certificates else "unadmitted"

    def is_admitted(self, node_id: str) -> bool:
        return self.status(node_id) == "admitted"

    def certificate(self, node_id: str) -> Certificate | None:
        return self.certificates.get(node_id)

    def add_certificate(self, cert: Certificate) -> bool:
        """Verify and keep ``cert``; True if it is new. A revoked key stays revoked."""
        verify_certificate(cert, self.admin_public_key)
        node = cert.node_id
        if node in self.revocations:
            return False
        old = self.certificates.get(node)
        if old is not None and old.issued_at >= cert.issued_at:
            return False
        if old is None and len(self.certificates) >= MAX_CERTIFICATES:
            raise ProtocolError("too_many_certificates", f"limit {MAX_CERTIFICATES}")
        self.certificates[node] = cert
        return True

    def add_revocation(self, rev: Revocation) -> bool:
        """Verify and apply ``rev``; True if it is new."""
        verify_revocation(rev, self.admin_public_key)
        if rev.node_id in self.revocations:
            return False
        if len(self.revocations) >= MAX_REVOCATIONS:
            raise ProtocolError("too_many_revocations", f"limit {MAX_REVOCATIONS}")
        self.revocations[rev.node_id] = rev
        self.certificates.pop(rev.node_id, None)
        return True

    def to_wire(self) -> dict[str, Any]:
        return {
            "admin": self.admin_public_key,
            "certificates": [c.to_wire() for c in self.certificates.values()],
            "revocations": [r.to_wire() for r in self.revocations.values()],
        }

    @classmethod
    def from_wire(cls, obj: object) -> AdmissionState:
        """Rebuild a saved state, verifying every entry (a tampered file loses the bad entries)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("admin"), bytes):
            raise ProtocolError("bad_admission_state")
        state = cls(obj["admin"])
        node_id_of(state.admin_public_key)
        for wire in obj.get("revocations") or []:
            state.add_revocation(Revocation.from_wire(wire))
        for wire in obj.get("certificates") or []:
            state.add_certificate(Certificate.from_wire(wire))
        return state
