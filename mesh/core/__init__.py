"""Sans-IO protocol cores.

Nothing under ``mesh.core`` imports asyncio, socket, time, random-as-a-global or touches a file:
each core takes messages and ``now`` (seconds, float) as arguments and returns what to send and
when it next wants to be woken. The asyncio runtime (``mesh.runtime``) and the simulator
(``sim``) drive the same cores. Randomness comes in as a ``random.Random`` instance.

The common verbs of a core (after aioquic):
    core.receive(sender, message, now)   # feed one decoded message
    core.handle_timer(now)               # called at or after core.next_deadline()
    core.next_deadline() -> float | None
    core.drain() -> list[Outgoing]       # what to send now
Bad peers raise ``mesh.errors.ProtocolError`` (drop and count); anything else is our bug.
"""
