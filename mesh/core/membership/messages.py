"""Membership messages: frozen dataclasses validated when built, explicit wire conversion.

One UDP datagram (envelope kind ``swim``) carries at most one control message (ping, indirect
ping, ack, nack) and any number of piggybacked updates (alive, suspect, dead, certificate,
revocation). Push-pull (envelope kind ``push_pull``, over TCP) carries a full state.
``from_wire`` raises ProtocolError('bad_message') for anything a peer could get wrong
(ProtocolError('malformed_coordinate') for a bad Vivaldi coordinate).

Vivaldi coordinates (``mesh.core.vivaldi``) ride along, each optional so that a message of a
member without them is still accepted: a ``Ping`` may carry the sender's coordinate, an ``Ack``
the coordinate of the pinged member (the target: the sender of a direct ack, or the member a
helper pinged for us), and push-pull the coordinate of each member it knows one of. Shapes only
grow in a way an older member ignores: the core puts a coordinate in a ping or ack only for a
member that has shown it speaks them (see ``core.py``), and push-pull carries them under a map
key of its own, ``coordinates``, which an older member never reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mesh.core.admission import Certificate, Revocation, is_node_id
from mesh.core.vivaldi import Coordinate
from mesh.errors import ProtocolError

Addr = tuple[str, int]
MAX_UPDATES_PER_DATAGRAM = 128
MAX_HTTP_ADDR = 300
MAX_HOST = 255
MAX_INCARNATION = 2**62
MAX_PROBE = 2**62
MAX_STATE_MEMBERS = 10_000
STATES = ("alive", "suspect", "dead", "left")


def _check_addr(addr: object) -> Addr:
    if not isinstance(addr, tuple) or len(addr) != 2:
        raise ValueError("an address is (host, port)")
    host, port = addr
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST:
        raise ValueError("bad host")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError("bad port")
    return addr


def _check_uint(value: object, limit: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(f"bad {what}")


def _check_node(value: object) -> None:
    if not is_node_id(value):
        raise ValueError("bad node id")


def _check_http(value: object) -> None:
    if not isinstance(value, str) or len(value) > MAX_HTTP_ADDR:
        raise ValueError("bad http address")


def _check_coordinate(value: object) -> None:
    if value is not None and not isinstance(value, Coordinate):
        raise ValueError("bad coordinate")


def _coordinate(obj: object) -> Coordinate | None:
    return None if obj is None else Coordinate.from_wire(obj)


def addr_to_wire(addr: Addr) -> list[Any]:
    return [addr[0], addr[1]]


def _addr(obj: object) -> Addr:
    if not isinstance(obj, list) or len(obj) != 2:
        raise ValueError("an address is [host, port]")
    return _check_addr((obj[0], obj[1]))


def _build(cls: type, *args: Any) -> Any:
    try:
        return cls(*args)
    except (ValueError, TypeError) as exc:
        raise ProtocolError("bad_message", f"{cls.__name__}: {exc}") from exc


# -- control messages ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Ping:
    """Are you alive? ``target`` is the id we expect at this address (it may have restarted as another).
    ``coordinate``: the sender's Vivaldi coordinate, or None."""

    TAG: ClassVar[str] = "ping"
    probe: int
    target: str
    coordinate: Coordinate | None = None

    def __post_init__(self) -> None:
        _check_uint(self.probe, MAX_PROBE, "probe number")
        _check_node(self.target)
        _check_coordinate(self.coordinate)

    def to_wire(self) -> list[Any]:
        if self.coordinate is None:
            return [self.TAG, self.probe, self.target]
        return [self.TAG, self.probe, self.target, self.coordinate.to_wire()]


@dataclass(frozen=True)
class PingReq:
    """Please ping ``target`` for me and relay its ack (or a nack) under ``probe``."""

    TAG: ClassVar[str] = "ping_req"
    probe: int
    target: str
    target_addr: Addr

    def __post_init__(self) -> None:
        _check_uint(self.probe, MAX_PROBE, "probe number")
        _check_node(self.target)
        _check_addr(self.target_addr)

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.probe, self.target, addr_to_wire(self.target_addr)]


@dataclass(frozen=True)
class Ack:
    """The target of ``probe`` is alive; ``coordinate``: the target's Vivaldi coordinate, or None."""

    TAG: ClassVar[str] = "ack"
    probe: int
    coordinate: Coordinate | None = None

    def __post_init__(self) -> None:
        _check_uint(self.probe, MAX_PROBE, "probe number")
        _check_coordinate(self.coordinate)

    def to_wire(self) -> list[Any]:
        if self.coordinate is None:
            return [self.TAG, self.probe]
        return [self.TAG, self.probe, self.coordinate.to_wire()]


@dataclass(frozen=True)
class Nack:
    """I could not reach the target either (so you, the requester, are probably fine)."""

    TAG: ClassVar[str] = "nack"
    probe: int

    def __post_init__(self) -> None:
        _check_uint(self.probe, MAX_PROBE, "probe number")

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.probe]


Control = Ping | PingReq | Ack | Nack


def control_from_wire(obj: object) -> Control:
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], str):
        raise ProtocolError("bad_message", "control is not [tag, ...]")
    tag, args = obj[0], obj[1:]
    if tag == "ping" and len(args) in (2, 3):
        return _build(Ping, args[0], args[1], _coordinate(args[2]) if len(args) == 3 else None)
    if tag == "ping_req" and len(args) == 3:
        try:
            addr = _addr(args[2])
        except ValueError as exc:
            raise ProtocolError("bad_message", str(exc)) from exc
        return _build(PingReq, args[0], args[1], addr)
    if tag == "ack" and len(args) in (1, 2):
        return _build(Ack, args[0], _coordinate(args[1]) if len(args) == 2 else None)
    if tag == "nack" and len(args) == 1:
        return _build(Nack, *args)
    raise ProtocolError("bad_message", f"unknown control {tag[:20]!r}")


# -- updates (piggybacked, retransmitted) -------------------------------------------------------

@dataclass(frozen=True)
class Alive:
    """``node`` is alive at ``incarnation`` with these addresses (cluster and role are in its certificate)."""

    TAG: ClassVar[str] = "alive"
    node: str
    incarnation: int
    gossip: Addr
    http: str

    def __post_init__(self) -> None:
        _check_node(self.node)
        _check_uint(self.incarnation, MAX_INCARNATION, "incarnation")
        _check_addr(self.gossip)
        _check_http(self.http)

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.node, self.incarnation, addr_to_wire(self.gossip), self.http]


@dataclass(frozen=True)
class Suspect:
    TAG: ClassVar[str] = "suspect"
    node: str
    incarnation: int
    source: str  # who suspects

    def __post_init__(self) -> None:
        _check_node(self.node)
        _check_uint(self.incarnation, MAX_INCARNATION, "incarnation")
        _check_node(self.source)

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.node, self.incarnation, self.source]


@dataclass(frozen=True)
class Dead:
    """``node`` is dead; if ``source`` is ``node`` itself, it left on purpose."""

    TAG: ClassVar[str] = "dead"
    node: str
    incarnation: int
    source: str

    def __post_init__(self) -> None:
        _check_node(self.node)
        _check_uint(self.incarnation, MAX_INCARNATION, "incarnation")
        _check_node(self.source)

    @property
    def left(self) -> bool:
        return self.source == self.node

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.node, self.incarnation, self.source]


@dataclass(frozen=True)
class CertUpdate:
    TAG: ClassVar[str] = "cert"
    cert: Certificate

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.cert.to_wire()]


@dataclass(frozen=True)
class RevokeUpdate:
    TAG: ClassVar[str] = "revoke"
    revocation: Revocation

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.revocation.to_wire()]


Update = Alive | Suspect | Dead | CertUpdate | RevokeUpdate


def update_from_wire(obj: object) -> Update:
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], str):
        raise ProtocolError("bad_message", "update is not [tag, ...]")
    tag, args = obj[0], obj[1:]
    if tag == "alive" and len(args) == 4:
        try:
            addr = _addr(args[2])
        except ValueError as exc:
            raise ProtocolError("bad_message", str(exc)) from exc
        return _build(Alive, args[0], args[1], addr, args[3])
    if tag == "suspect" and len(args) == 3:
        return _build(Suspect, *args)
    if tag == "dead" and len(args) == 3:
        return _build(Dead, *args)
    if tag == "cert" and len(args) == 1:
        return CertUpdate(Certificate.from_wire(args[0]))
    if tag == "revoke" and len(args) == 1:
        return RevokeUpdate(Revocation.from_wire(args[0]))
    raise ProtocolError("bad_message", f"unknown update {tag[:20]!r}")


@dataclass(frozen=True)
class Datagram:
    """One UDP message: a control message and/or piggybacked updates."""

    KIND: ClassVar[str] = "swim"
    control: Control | None
    updates: tuple[Update, ...] = ()

    def __post_init__(self) -> None:
        if len(self.updates) > MAX_UPDATES_PER_DATAGRAM:
            raise ValueError("too many updates in one datagram")

    def to_wire(self) -> list[Any]:
        return [None if self.control is None else self.control.to_wire(), [u.to_wire() for u in self.updates]]

    @classmethod
    def from_wire(cls, obj: object) -> Datagram:
        if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[1], list):
            raise ProtocolError("bad_message", "datagram is not [control, updates]")
        if len(obj[1]) > MAX_UPDATES_PER_DATAGRAM:
            raise ProtocolError("bad_message", "too many updates")
        control = None if obj[0] is None else control_from_wire(obj[0])
        return cls(control, tuple(update_from_wire(u) for u in obj[1]))


# -- push-pull (TCP) ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MemberRecord:
    """One member in a push-pull state; ``coordinate`` (its Vivaldi coordinate, or None) travels
    beside the record on the wire, in the state's ``coordinates`` list."""

    node: str
    incarnation: int
    state: str
    gossip: Addr
    http: str
    coordinate: Coordinate | None = None

    def __post_init__(self) -> None:
        _check_node(self.node)
        _check_uint(self.incarnation, MAX_INCARNATION, "incarnation")
        if self.state not in STATES:
            raise ValueError("bad state")
        _check_addr(self.gossip)
        _check_http(self.http)
        _check_coordinate(self.coordinate)

    def to_wire(self) -> list[Any]:
        return [self.node, self.incarnation, self.state, addr_to_wire(self.gossip), self.http]


@dataclass(frozen=True)
class PushPull:
    """A member's full view: members, certificates and revocations, for anti-entropy over TCP.

    On the wire the members' coordinates are a separate list ``coordinates`` of ``[index, coordinate]``
    (index into ``members``), absent when there are none, so a member that predates them reads the
    rest unchanged; a record it has no coordinate for is accepted as well."""

    KIND: ClassVar[str] = "push_pull"
    members: tuple[MemberRecord, ...]
    certificates: tuple[Certificate, ...]
    revocations: tuple[Revocation, ...]

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"members": [m.to_wire() for m in self.members],
                                "certificates": [c.to_wire() for c in self.certificates],
                                "revocations": [r.to_wire() for r in self.revocations]}
        coordinates = [[i, m.coordinate.to_wire()] for i, m in enumerate(self.members) if m.coordinate is not None]
        if coordinates:
            wire["coordinates"] = coordinates
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> PushPull:
        if not isinstance(obj, dict):
            raise ProtocolError("bad_message", "push-pull is not a map")
        parts = [obj.get("members"), obj.get("certificates"), obj.get("revocations")]
        if not all(isinstance(p, list) and len(p) <= MAX_STATE_MEMBERS for p in parts):
            raise ProtocolError("bad_message", "push-pull parts must be bounded lists")
        coordinates = _coordinates_from_wire(obj.get("coordinates"), len(parts[0]))  # type: ignore[arg-type]
        members = []
        for i, m in enumerate(parts[0]):  # type: ignore[arg-type]
            if not isinstance(m, list) or len(m) != 5:
                raise ProtocolError("bad_message", "member record")
            try:
                addr = _addr(m[3])
            except ValueError as exc:
                raise ProtocolError("bad_message", str(exc)) from exc
            members.append(_build(MemberRecord, m[0], m[1], m[2], addr, m[4], coordinates.get(i)))
        return cls(tuple(members), tuple(Certificate.from_wire(c) for c in parts[1]),  # type: ignore[union-attr]
                   tuple(Revocation.from_wire(r) for r in parts[2]))  # type: ignore[union-attr]


def _coordinates_from_wire(obj: object, members: int) -> dict[int, Coordinate]:
    """The ``coordinates`` list of a push-pull: ``[index, coordinate]`` pairs, each index once."""
    if obj is None:
        return {}
    if not isinstance(obj, list) or len(obj) > members:
        raise ProtocolError("bad_message", "push-pull coordinates must be a list, one entry per member at most")
    out: dict[int, Coordinate] = {}
    for entry in obj:
        if not isinstance(entry, list) or len(entry) != 2:
            raise ProtocolError("bad_message", "a push-pull coordinate is [index, coordinate]")
        i = entry[0]
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < members or i in out:
            raise ProtocolError("bad_message", "push-pull coordinate index")
        out[i] = Coordinate.from_wire(entry[1])
    return out
