"""SWIM membership with Lifeguard, one mechanism per module (after hashicorp/memberlist).

config (profiles), state (members, merge rules), suspicion (timeouts as pure functions),
awareness (local health), queue (piggybacked broadcasts), messages (wire types), core (Membership).
"""

from mesh.core.membership.config import Config
from mesh.core.membership.core import MemberEvent, Membership, Outgoing, SendDatagram, StartPushPull
from mesh.core.membership.messages import Addr, Datagram, PushPull
from mesh.core.membership.state import MemberInfo, MemberState

__all__ = ["Addr", "Config", "Datagram", "MemberEvent", "MemberInfo", "MemberState", "Membership", "Outgoing",
           "PushPull", "SendDatagram", "StartPushPull"]
