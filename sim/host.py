"""SimHost: pumps one sans-IO core on a simulated host, as the asyncio runtime does on a real one.

A core exposes ``receive(sender, msg, now)``, ``handle_timer(now)``, ``next_deadline()`` and
``drain()``. After every call into the core the host drains it: an effect with ``dest`` and
``message`` goes over the simulated network to the host that runs ``dest`` (sized as its
msgpack encoding plus the signed envelope), any other effect goes to ``on_effect``; then the
one timer is re-armed at ``next_deadline()`` on the virtual clock. A crashed host drops what
arrives and keeps no timer; ``replace_core`` gives it a fresh core on restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sim.engine import Engine, Timer
from sim.network import Network

ENVELOPE_BYTES = 110  # version, kind, sender key (32), seq, signature (64), framing


class SimHost:
    def __init__(self, engine: Engine, net: Network, host: str, node_id: str, core: Any,
                 route: Callable[[str], str | None], sizer: Callable[[Any], int],
                 on_effect: Callable[[Any], None], category: str, peers: dict[str, SimHost],
                 reliable: bool = True) -> None:
        self.engine = engine
        self.net = net
        self.host = host
        self.node_id = node_id
        self.core = core
        self.route = route  # node id -> host name
        self.sizer = sizer
        self.on_effect = on_effect
        self.category = category
        self.peers = peers  # node id -> SimHost running the same core kind
        self.reliable = reliable
        self._timer: Timer | None = None
        self._armed_at: float | None = None
        self.sent = 0
        self.received = 0
        self.undeliverable = 0

    @property
    def up(self) -> bool:
        return self.net.hosts[self.host].up

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn(*args, now)`` on the core (e.g. ``core.submit``) and pump its effects."""
        result = fn(*args, self.engine.now)
        self.pump()
        return result

    def deliver(self, sender: str, message: Any) -> None:
        if not self.up:
            return
        self.received += 1
        self.core.receive(sender, message, self.engine.now)
        self.pump()

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = None
        if not self.up:
            return
        self.core.handle_timer(self.engine.now)
        self.pump()

    def pump(self) -> None:
        for effect in self.core.drain():
            dest = getattr(effect, "dest", None)
            message = getattr(effect, "message", None)
            if dest is not None and message is not None:
                self._send(dest, message)
            else:
                self.on_effect(effect)
        self._rearm()

    def _send(self, dest: str, message: Any) -> None:
        peer = self.peers.get(dest)
        target = self.route(dest)
        if peer is None or target is None:
            self.undeliverable += 1
            return
        self.sent += 1
        sender = self.node_id
        self.net.send(self.host, target, self.sizer(message) + ENVELOPE_BYTES,
                      lambda: peer.deliver(sender, message), self.category, reliable=self.reliable)

    def _rearm(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._armed_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = deadline
        if deadline is not None:
            self._timer = self.engine.timer(deadline, self._fire)

    def crash(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._armed_at = None

    def replace_core(self, core: Any) -> None:
        """Restart with a new core (rebuilt from what the old one persisted)."""
        self.crash()
        self.core = core
        self.pump()
