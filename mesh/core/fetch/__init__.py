"""Fetching chunks from the cheapest holder, and one WAN transfer per chunk per cluster (sans-IO).

``FetchPlanner`` (``planner.py``) runs on the reader's node, one per read of a ``(key, version)``;
``WanCoalescer`` (``coalesce.py``) runs on each cluster's master next to its
``mesh.core.holders.HolderIndex``. Costs come from ``mesh.core.costs.CostModel`` (RTT from
``mesh.core.vivaldi.Coordinates.rtt``). Messages and effects are in ``messages.py``.

Driving a read on a node (runtime or simulator)::

    model = CostModel(PriceTable.from_config(config.costs), rtt=lambda a, b: coords.rtt(a, b, me=my_id))
    p = FetchPlanner(Host(my_id, my_cluster), manifest.chunks, model, now, FetchConfig(),
                     holders={h: [Host(node, cluster), ...]})  # what the own master knows, at least
    p.add_holders(h, [Host(node, cluster), ...], now)  # more, when known (home -> clusters -> masters)
    p.receive(ChunkOk(request_id, data) | ChunkError(request_id, reason), now)  # a Request's answer
    p.receive(WanGrant | WanWait | InCluster, now)     # the master's answers (message_from_wire)
    p.holder_dead(node, now)                           # failure detector
    p.no_more_holders(h, now)                          # a NeedHolders lookup found nothing new
    p.handle_timer(now)                                # at or after p.next_deadline()
    for effect in p.drain():                           # after every call above, IN ORDER
        Request(request_id, ref, estimate, deadline) -> GET the chunk from estimate.holder; answer
                                                 with ChunkOk/ChunkError (no answer: the deadline does it)
        Cancel(request_id)          -> abort that transfer; a late answer is ignored anyway
        ToMaster(WanClaim | WanDone)-> msg.to_wire(), send to the cluster's master
        NeedHolders(chunk)          -> look up more holders, then add_holders or no_more_holders
        BecameHolder(ref, data, via_wan) -> store the (verified) chunk, HolderReporter.added(ref.hash);
                                       must be servable before the next ToMaster is sent
        Deliver(index, ref, data)   -> the reader's next chunk, verified, in file order
        HolderFault(holder, chunk, reason) -> count; "missing": tell the master (HolderIndex.drop)
        FetchFailed(index, ref, reason) -> the read fails with ChunkMissing; p.finished is True
    p.done / p.failed / p.finished

On a master::

    co = WanCoalescer(index, lease=120.0)
    co.receive(node, WanClaim | WanDone, now)   # from a node of this cluster
    co.forget(node, now)                        # failure detector: dead
    co.handle_timer(now)                        # at or after co.next_deadline()
    for send in co.drain(): send.message.to_wire() -> node send.dest

Invariants the tests check: a request always goes to a holder of least expected cost among the
live, untried holders the planner knows; nothing that fails verification is delivered or stored;
N readers of one cluster missing the same chunk cause one WAN transfer (while it succeeds).
"""

from mesh.core.fetch.coalesce import WanCoalescer
from mesh.core.fetch.messages import (
    BecameHolder,
    Cancel,
    ChunkError,
    ChunkOk,
    Deliver,
    Effect,
    FetchFailed,
    HolderFault,
    InCluster,
    NeedHolders,
    Request,
    Send,
    ToMaster,
    WanClaim,
    WanDone,
    WanGrant,
    WanWait,
    message_from_wire,
)
from mesh.core.fetch.planner import FetchConfig, FetchPlanner

__all__ = ["BecameHolder", "Cancel", "ChunkError", "ChunkOk", "Deliver", "Effect", "FetchConfig", "FetchFailed",
           "FetchPlanner", "HolderFault", "InCluster", "NeedHolders", "Request", "Send", "ToMaster", "WanClaim",
           "WanCoalescer", "WanDone", "WanGrant", "WanWait", "message_from_wire"]
