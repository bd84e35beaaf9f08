"""Gossip engine and failure detector: the mesh's shared view, as protocol logic with no I/O.

Nothing here touches a socket, a task or the clock. Every input carries `now` (seconds on the
caller's monotonic clock) and every method returns the messages to send as `(peer_id, dict)`
pairs; the node feeds it transport events and carries the messages out. Only durations cross
the wire (`age_ms`, `ttl_ms`), so nodes need no synchronised clocks.

Messages (JSON-able dicts, discriminated by "t"; unknown types are ignored):

    hb       {"inc", "ver", "hb", "up"?, "sig"?}   each interval to every linked peer, and on connect
    digest   {"entries": [[id, inc, ver, hb, age_ms]], "gone": [[id, inc, ttl_ms]], "ask": bool,
              "beats"?: [[id, inc, hb, up_ms, age_ms, sig]]}
                                                   each interval to one linked peer in turn (more,
                                                   asking, when news must come through relays)
    pull     {"ids": [id]}                         "send me these records"
    records  {"records": [{"r": record, "age_ms"}]}  answers to pulls; the owner's pushes on change
    bye      {"inc"}                               the sender is leaving now

Records. A node is the only author of its own record, and gossip about oneself is ignored.
Records order by (incarnation, version): the incarnation is fixed at process start, the version
grows with every `update_self`, which pushes the record to every linked peer at once. Anything
else travels by pull: a heartbeat or digest that shows a newer version than ours makes us pull
it (one request in flight per node), so a lost push is repaired within an interval.

Liveness. The heartbeat counter grows every interval without changing the version. A sighting
carries its age (how long ago the reporter saw that beat arrive), so relaying never makes news
look fresher than it is. A peer whose heartbeat has not advanced for `dead_after_s` is removed;
one we hear of only through relays gets `relayed_dead_after_s`, since each hop may hold news
back for an interval. While part of our view is second-hand, or some peer is suspect, digests go
to several peers and ask for theirs back: a peer whose link to us fails but which others still
hear is vouched for by them rather than removed.

Signed beats. With signatures on, each beat is signed by its node together with its uptime
(`up`, ms on its own monotonic clock), and digests carry the latest signed beat known of each
node. A relay's word counts for liveness only as such beats: a higher one, credited no more time
than its signed uptime says passed since the last one credited. So no member can keep a dead
node alive by relaying, replaying or holding back beats, while a live node some peers reach only
through others stays in view. A node that timed out returns in the same incarnation only on its
own word (a link, or a signed beat past the one it timed out at); while anyone still gossips it,
its grave is kept. Older nodes ignore the new fields.

Admission. Nodes learned only through one member's gossip count against that member's share of
the table (`max_introduced_per_peer`); linked peers always get a place (see _table.py).

Departures. A goodbye removes the sender at once and buries its incarnation for `tombstone_s`;
graves travel in digests, so peers without a link learn of it too, and stale gossip cannot
resurrect it. A timeout buries only the heartbeats seen so far, so a falsely suspected peer
returns with its next beat. A higher incarnation (a restart) always gets in.

The package, one module a concern:
  _fields    field parsing and the hard protocol limits
  _records   NodeRecord and ModelAd, and the bytes their owner signs
  _events    engine states, view-change events, PeerView
  _config    GossipConfig
  _detector  FailureDetector
  _table     the peer table and its merge rules
  _engine    GossipEngine
"""

from mesh_llm.mesh.gossip._config import GossipConfig
from mesh_llm.mesh.gossip._detector import FailureDetector
from mesh_llm.mesh.gossip._engine import GossipEngine
from mesh_llm.mesh.gossip._events import (
    Departure,
    EngineState,
    GossipEvent,
    MessageType,
    Outgoing,
    PeerJoined,
    PeerLeft,
    PeerRestarted,
    PeerStatus,
    PeerUpdated,
    PeerView,
)
from mesh_llm.mesh.gossip._fields import MAX_MESSAGE_BYTES
from mesh_llm.mesh.gossip._records import (
    ModelAd,
    NodeRecord,
    Signer,
    Verifier,
    bye_signing_bytes,
    record_signing_bytes,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Departure",
    "EngineState",
    "FailureDetector",
    "GossipConfig",
    "GossipEngine",
    "GossipEvent",
    "MessageType",
    "ModelAd",
    "NodeRecord",
    "Outgoing",
    "PeerJoined",
    "PeerLeft",
    "PeerRestarted",
    "PeerStatus",
    "PeerUpdated",
    "PeerView",
    "Signer",
    "Verifier",
    "bye_signing_bytes",
    "record_signing_bytes",
]
