"""Version issuance: a replicated per-key counter, sans-IO (one ``Issuer`` per master).

Each master runs one ``Issuer``. It is at once the entry point for commits from its cluster,
the home of the keys ``dht.placement`` puts first on its list, and a replica of others.

Driving it (runtime or simulator)::

    iss = Issuer(identity, IssuerConfig(replicas=3, replica_scope="mesh"), random.Random(seed),
                 records=stored_records)          # every record ever persisted, on restart
    iss.set_roster(epoch, masters, now)           # admitted masters (dht.Master); every epoch, in order
    iss.set_live(live_node_ids, now)              # failure detector's view, whenever it changes
    iss.submit(request_id, draft, expected_parent, now)   # a host commits; Done(request_id) follows
    iss.receive(sender_node_id, message, now)     # a decoded message from another master
    iss.handle_timer(now)                         # at or after iss.next_deadline()
    for effect in iss.drain():                    # after each call above
        Persist(records) -> upsert all records in ONE transaction, before any later effect
        Send(dest, message) -> message_to_wire(message), seal, send to master dest
        Done(request_id, key, manifest | None, error | None) -> answer the committing host

A runtime may group-commit: gather the ``Persist`` of several drains in one transaction, as long
as no ``Send``/``Done`` after a ``Persist`` goes out before that transaction is durable.

Messages (``messages.py``; ``message_to_wire``/``message_from_wire``)::

    Commit(request_id, origin, draft, expected_parent, timeout, hops)  origin -> home
    CommitReply(request_id, key, manifest | error_code, error_message)  home -> origin
    Prepare(key, ballot) / Promise(key, ballot, top) / Nack(key, ballot, promised)
    Accept(key, entry) / Accepted(key, ballot, version)                 home <-> replicas
    Handoff(key, epoch) / HandoffDone(key, epoch)                       old replica <-> new home

Protocol. The key's *list* is ``dht`` placement over the roster (admitted masters, changed only
by join/leave acts, numbered by epoch); its *home* is the first master of the list alive in
the local view, so a crash moves the home without changing the replica set. Per key this is
multi-Paxos with one slot in flight: a would-be home picks ``Ballot(epoch, round, node)``
(round persisted first, so never reused), gathers promises from a majority of the list (and of
the list under the previous roster, right after a change), re-proposes the highest slot it
learns (the highest version, highest ballot), then for each commit issues ``last + 1``,
signs the manifest, and acknowledges once a majority of the list has *persisted* the accept.
Replicas promise/accept only ballots >= the highest they promised, so an old home (older
epoch or round) is fenced as soon as a majority promised a newer ballot: two masters with
different views can both try, only one number wins per slot. A commit whose majority is
unreachable fails after ``commit_timeout`` with ``ReplicasUnreachable`` naming the home and
the replicas that did not answer. ``expected_parent`` that is not the latest gives ``Conflict``.

Hand-off. On a roster change every replica nudges the key's new home (``Handoff``) for each
key whose list changed; the new home prepares over old and new lists and re-proposes, which
moves the counter onto the new list. A leaving master waits for ``handoffs_pending() == 0``.

Limits and assumptions (documented, not hidden): prepares cover the current and previous
roster only, so each key must settle (hand-off done) before the roster after next; a commit
interrupted by a ballot change is retried and may leave its draft issued twice under two
versions (never one version twice). Manifests are cached only once chosen.
"""

from mesh.core.issuance.issuer import Issuer, IssuerConfig, majority
from mesh.core.issuance.messages import (
    Accept,
    Accepted,
    Ballot,
    Commit,
    CommitReply,
    Entry,
    Handoff,
    HandoffDone,
    Message,
    Nack,
    Prepare,
    Promise,
    manifest_hash,
    message_from_wire,
    message_to_wire,
)
from mesh.core.issuance.records import (
    AcceptRecord,
    Done,
    Effect,
    Persist,
    PromiseRecord,
    Record,
    RoundRecord,
    Send,
)

__all__ = [
    "Accept", "AcceptRecord", "Accepted", "Ballot", "Commit", "CommitReply", "Done", "Effect", "Entry",
    "Handoff", "HandoffDone", "Issuer", "IssuerConfig", "Message", "Nack", "Persist", "Prepare", "Promise",
    "PromiseRecord", "Record", "RoundRecord", "Send", "majority", "manifest_hash", "message_from_wire",
    "message_to_wire",
]
