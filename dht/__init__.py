"""Placement: key to home master and replica set, and hand-off planning (pure, no I/O)."""

from dht.placement import (
    DEFAULT_REPLICAS,
    DEFAULT_VNODES,
    SCOPES,
    Master,
    Move,
    Placement,
    key_id,
    plan_handoff,
    replicas,
)

__all__ = ["DEFAULT_REPLICAS", "DEFAULT_VNODES", "SCOPES", "Master", "Move", "Placement", "key_id",
           "plan_handoff", "replicas"]
