"""Gossip engine and failure detector: the mesh's shared view, as protocol logic with no I/O.

Nothing here touches a socket, a task or the clock. Every input carries `now` (seconds on the
caller's monotonic clock) and every method returns the messages to send as `(peer_id, dict)`
pairs; the node feeds it transport events and carries the messages out. Only durations cross
the wire (`age_ms`, `ttl_ms`), so nodes need no synchronised clocks.

Messages (JSON-able dicts, discriminated by "t"; unknown types are ignored):

    hb       {"inc", "ver", "hb"}                  each interval to every linked peer, and on connect
    digest   {"entries": [[id, inc, ver, hb, age_ms]], "gone": [[id, inc, ttl_ms]], "ask": bool}
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

Departures. A goodbye removes the sender at once and buries its incarnation for `tombstone_s`;
graves travel in digests, so peers without a link learn of it too, and stale gossip cannot
resurrect it. A timeout buries only the heartbeats seen so far, so a falsely suspected peer
returns with its next beat. A higher incarnation (a restart) always gets in.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from mesh_llm.errors import ConfigError, MalformedFrame

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
]

logger = logging.getLogger(__name__)

# Hard protocol limits. They are constants rather than config so that every node agrees on what
# is well-formed; together they keep every message this module emits under one 1 MiB frame.
MAX_MESSAGE_BYTES: Final = 1 << 20
MAX_RECORD_BYTES: Final = 16 * 1024
MAX_RECORDS_PER_MESSAGE: Final = 32  # 32 x 16 KiB = 512 KiB
MAX_TABLE_ENTRIES: Final = 1024  # digest entries, gone entries, pulled ids: ~400 KiB worst case
MAX_ID_CHARS: Final = 128
MAX_TEXT_CHARS: Final = 256
MAX_ADDRESSES: Final = 16
MAX_MODELS: Final = 32
MAX_ON_DISK: Final = 128
MAX_DEMAND: Final = 128
MAX_INT: Final = 2**63 - 1
MAX_PORT: Final = 65535

Outgoing: TypeAlias = tuple[str, dict[str, Any]]
"""A message to send: (peer node id, JSON-able dict). Dicts may be shared between peers: don't mutate."""


# --------------------------------------------------------------------------------------------
# Validation helpers: turn anything structurally wrong into MalformedFrame, never KeyError.

_MISSING: Final = object()


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if type(value) is dict:  # the usual case; the ABC check below is much slower
        return value
    if not isinstance(value, Mapping):
        raise MalformedFrame(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _as_int(value: object, what: str, lo: int = 0, hi: int = MAX_INT) -> int:
    # bool is an int subclass; a JSON true where a number belongs is malformed.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedFrame(f"{what}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise MalformedFrame(f"{what}: {value} is outside [{lo}, {hi}]")
    return value


def _as_str(value: object, what: str, limit: int = MAX_TEXT_CHARS, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise MalformedFrame(f"{what}: expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise MalformedFrame(f"{what}: longer than {limit} characters")
    if nonempty and not value:
        raise MalformedFrame(f"{what}: must not be empty")
    return value


def _as_list(value: object, what: str, limit: int) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise MalformedFrame(f"{what}: expected a list, got {type(value).__name__}")
    if len(value) > limit:
        raise MalformedFrame(f"{what}: more than {limit} items")
    return value


def _field(data: Mapping[str, Any], key: str, what: str, default: Any = _MISSING) -> Any:
    value = data.get(key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise MalformedFrame(f"{what}: missing field {key!r}")
        return default
    return value


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return mapping if isinstance(mapping, MappingProxyType) else MappingProxyType(dict(mapping))


def _node_id(value: object, what: str) -> str:
    return _as_str(value, what, limit=MAX_ID_CHARS, nonempty=True)


def _ms(seconds: float) -> int:
    """A duration for the wire: whole milliseconds, never negative."""
    return max(0, int(seconds * 1000))


# --------------------------------------------------------------------------------------------
# What a node advertises.

_MODEL_KEYS: Final = frozenset({"name", "ready", "role", "layers", "port", "in_flight", "free_slots"})
MAX_SLOTS: Final = 1024
_RECORD_KEYS: Final = frozenset(
    {
        "node_id",
        "incarnation",
        "version",
        "heartbeat",
        "software",
        "addresses",
        "role",
        "capacity_bytes",
        "models",
        "on_disk",
        "api_port",
        "console_port",
        "demand",
        "client",
        "sig",
    }
)
_SIG_HEX: Final = 128  # an ed25519 signature, hex
_UNKNOWN_GRAVE_CHECKS: Final = 16  # goodbyes of unknown nodes whose signature one digest may cost
_RECORD_LABEL: Final = b"mesh-llm record v1\0"
_BYE_LABEL: Final = b"mesh-llm bye v1\0"

Signer: TypeAlias = Callable[[bytes], bytes]
"""Signs bytes with this node's key."""
Verifier: TypeAlias = Callable[[str, bytes, bytes], bool]
"""(node id, data, signature) -> whether that node's key signed the data."""


def record_signing_bytes(signed: Mapping[str, Any]) -> bytes:
    """What an owner signs: its record's wire form without the heartbeat (relays refresh it) and
    without the signature, as canonical JSON."""
    body = json.dumps(
        dict(signed), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return _RECORD_LABEL + body.encode()


def bye_signing_bytes(node_id: str, incarnation: int) -> bytes:
    """What a leaving node signs, so that anyone may relay its goodbye and nobody can forge one."""
    return _BYE_LABEL + f"{node_id}:{incarnation}".encode()


def _sig_bytes(value: object) -> bytes | None:
    if (
        not isinstance(value, str)
        or len(value) != _SIG_HEX
        or not all(c in "0123456789abcdef" for c in value)
    ):
        return None
    return bytes.fromhex(value)


@dataclass(frozen=True)
class ModelAd:
    """One model a node serves (or helps serve as a split worker)."""

    name: str
    ready: bool
    role: str = "host"  # "host" answers HTTP; "worker" only holds layers for a host
    layers: tuple[int, int] | None = None  # [start, end) of the layers this node holds, if split
    port: int | None = None
    in_flight: int = 0
    free_slots: int | None = None  # request slots free on a host's engine; None: not known
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields from newer versions, kept as-is

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))

    def __hash__(self) -> int:
        return hash(
            (self.name, self.ready, self.role, self.layers, self.port, self.in_flight, self.free_slots)
        )

    def to_dict(self) -> dict[str, Any]:
        """Encode as a JSON-able dict (unknown fields from `extra` included)."""
        return {
            **self.extra,
            "name": self.name,
            "ready": self.ready,
            "role": self.role,
            "layers": list(self.layers) if self.layers is not None else None,
            "port": self.port,
            "in_flight": self.in_flight,
            "free_slots": self.free_slots,
        }

    @classmethod
    def from_dict(cls, data: object, what: str = "model") -> ModelAd:
        """Decode a dict from the wire; unknown fields land in `extra`. Raises MalformedFrame."""
        d = _mapping(data, what)
        ready = _field(d, "ready", what, False)
        if not isinstance(ready, bool):
            raise MalformedFrame(f"{what}.ready: expected a boolean")
        layers: tuple[int, int] | None = None
        raw_layers = _field(d, "layers", what, None)
        if raw_layers is not None:
            pair = _as_list(raw_layers, f"{what}.layers", 2)
            if len(pair) != 2:
                raise MalformedFrame(f"{what}.layers: expected [start, end]")
            start = _as_int(pair[0], f"{what}.layers[0]")
            end = _as_int(pair[1], f"{what}.layers[1]")
            if start > end:
                raise MalformedFrame(f"{what}.layers: start {start} is after end {end}")
            layers = (start, end)
        raw_port = _field(d, "port", what, None)
        raw_free = _field(d, "free_slots", what, None)
        return cls(
            name=_as_str(_field(d, "name", what), f"{what}.name", nonempty=True),
            ready=ready,
            role=_as_str(_field(d, "role", what, "host"), f"{what}.role"),
            layers=layers,
            port=None if raw_port is None else _as_int(raw_port, f"{what}.port", 0, MAX_PORT),
            in_flight=_as_int(_field(d, "in_flight", what, 0), f"{what}.in_flight"),
            free_slots=None if raw_free is None else _as_int(raw_free, f"{what}.free_slots", 0, MAX_SLOTS),
            extra={k: v for k, v in d.items() if k not in _MODEL_KEYS},
        )


@dataclass(frozen=True)
class NodeRecord:
    """Everything a node advertises to the mesh. Only the node itself ever changes it.

    `incarnation` is fixed at process start (start time in ms is a good choice) so a restarted
    node supersedes its old record; `version` orders records within one incarnation. `heartbeat`
    is a liveness counter that advances without bumping `version`.
    """

    node_id: str
    incarnation: int
    version: int = 0
    heartbeat: int = 0
    software: str = ""
    addresses: tuple[str, ...] = ()
    role: str = "idle"  # "host" | "worker" | "client" | "standby" | "idle"; newer nodes may add more
    capacity_bytes: int = 0
    models: tuple[ModelAd, ...] = ()
    on_disk: tuple[str, ...] = ()
    api_port: int = 0
    console_port: int = 0
    demand: Mapping[str, int] = field(default_factory=dict)  # model name -> request counter
    client: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields from newer versions, kept as-is
    # The owner's signature over `signed`: the record exactly as the owner encoded it, minus its
    # heartbeat. Relays pass that form on unchanged, so the signature checks wherever it goes.
    signature: str = field(default="", compare=False)
    signed: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Freeze containers: records are shared with callers and must never change under the engine.
        object.__setattr__(self, "addresses", tuple(self.addresses))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "on_disk", tuple(self.on_disk))
        object.__setattr__(self, "demand", _frozen(self.demand))
        object.__setattr__(self, "extra", _frozen(self.extra))

    def __hash__(self) -> int:
        return hash((self.node_id, self.incarnation, self.version, self.heartbeat))

    @property
    def key(self) -> tuple[int, int]:
        """The order of records from one node: a higher key supersedes a lower one."""
        return (self.incarnation, self.version)

    def to_dict(self) -> dict[str, Any]:
        """Encode as a JSON-able dict (unknown fields from `extra` included): the owner's signed
        form when there is one, with the current heartbeat and the signature."""
        if self.signed is not None:
            out = {**self.signed, "heartbeat": self.heartbeat}
        else:
            out = self.unsigned_dict()
        if self.signature:
            out["sig"] = self.signature
        return out

    def unsigned_dict(self) -> dict[str, Any]:
        """The record's fields as this version encodes them (what an owner signs, plus heartbeat)."""
        return {
            **self.extra,
            "node_id": self.node_id,
            "incarnation": self.incarnation,
            "version": self.version,
            "heartbeat": self.heartbeat,
            "software": self.software,
            "addresses": list(self.addresses),
            "role": self.role,
            "capacity_bytes": self.capacity_bytes,
            "models": [m.to_dict() for m in self.models],
            "on_disk": list(self.on_disk),
            "api_port": self.api_port,
            "console_port": self.console_port,
            "demand": dict(self.demand),
            "client": self.client,
        }

    @classmethod
    def from_dict(cls, data: object) -> NodeRecord:
        """Decode a dict from the wire.

        Unknown fields are kept in `extra` (a newer node may add fields; we pass them on
        unchanged). Identity and ordering fields are required; the rest default when absent.
        Raises MalformedFrame for anything structurally invalid or larger than MAX_RECORD_BYTES.
        """
        d = _mapping(data, "record")
        try:
            size = len(json.dumps(d, separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            raise MalformedFrame(f"record: not JSON-encodable ({exc})") from exc
        if size > MAX_RECORD_BYTES:
            raise MalformedFrame(f"record: {size} bytes exceeds {MAX_RECORD_BYTES}")
        node_id = _node_id(_field(d, "node_id", "record"), "record.node_id")
        what = f"record {node_id[:16]}"

        def text_list(key: str, limit: int) -> tuple[str, ...]:
            items = _as_list(_field(d, key, what, ()), f"{what}.{key}", limit)
            return tuple(_as_str(v, f"{what}.{key}[{i}]") for i, v in enumerate(items))

        raw_demand = _mapping(_field(d, "demand", what, {}), f"{what}.demand")
        if len(raw_demand) > MAX_DEMAND:
            raise MalformedFrame(f"{what}.demand: more than {MAX_DEMAND} models")
        demand = {
            _as_str(k, f"{what}.demand key"): _as_int(v, f"{what}.demand[{k}]") for k, v in raw_demand.items()
        }
        models = _as_list(_field(d, "models", what, ()), f"{what}.models", MAX_MODELS)
        client = _field(d, "client", what, False)
        if not isinstance(client, bool):
            raise MalformedFrame(f"{what}.client: expected a boolean")
        return cls(
            node_id=node_id,
            incarnation=_as_int(_field(d, "incarnation", what), f"{what}.incarnation"),
            version=_as_int(_field(d, "version", what), f"{what}.version"),
            heartbeat=_as_int(_field(d, "heartbeat", what), f"{what}.heartbeat"),
            software=_as_str(_field(d, "software", what, ""), f"{what}.software"),
            addresses=text_list("addresses", MAX_ADDRESSES),
            role=_as_str(_field(d, "role", what, "idle"), f"{what}.role"),
            capacity_bytes=_as_int(_field(d, "capacity_bytes", what, 0), f"{what}.capacity_bytes"),
            models=tuple(ModelAd.from_dict(m, f"{what}.models[{i}]") for i, m in enumerate(models)),
            on_disk=text_list("on_disk", MAX_ON_DISK),
            api_port=_as_int(_field(d, "api_port", what, 0), f"{what}.api_port", 0, MAX_PORT),
            console_port=_as_int(_field(d, "console_port", what, 0), f"{what}.console_port", 0, MAX_PORT),
            demand=demand,
            client=client,
            extra={k: v for k, v in d.items() if k not in _RECORD_KEYS},
            signature=_as_str(_field(d, "sig", what, ""), f"{what}.sig", _SIG_HEX),
            signed=MappingProxyType({k: v for k, v in d.items() if k not in ("heartbeat", "sig")}),
        )

    def signed_by_owner(self, verify: Verifier) -> bool:
        """Whether the record carries its owner's valid signature."""
        sig = _sig_bytes(self.signature)
        body = (
            self.signed
            if self.signed is not None
            else {k: v for k, v in self.unsigned_dict().items() if k != "heartbeat"}
        )
        try:
            data = record_signing_bytes(body)
        except (TypeError, ValueError):
            return False
        return sig is not None and verify(self.node_id, data, sig)


# --------------------------------------------------------------------------------------------
# States, events, views, config.


class EngineState(Enum):
    """Lifecycle of the local engine."""

    RUNNING = "running"
    LEFT = "left"  # said goodbye; sends and accepts nothing more


class PeerStatus(Enum):
    """Liveness of a peer in the view."""

    ALIVE = "alive"
    SUSPECT = "suspect"  # heartbeat stalled past suspect_after_s; still listed, better not routed to


class Departure(Enum):
    """Why a peer left the view."""

    BYE = "bye"
    TIMEOUT = "timeout"


class MessageType(StrEnum):
    """The "t" field of every gossip message."""

    HB = "hb"
    DIGEST = "digest"
    PULL = "pull"
    RECORDS = "records"
    BYE = "bye"


# Event records are as received; `PeerView.heartbeat` has the latest heartbeat.


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """A node entered the view (new, or back after a timeout or restart after goodbye)."""

    record: NodeRecord


@dataclass(frozen=True, slots=True)
class PeerUpdated:
    """A node in the view published a newer version of its record."""

    record: NodeRecord


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """A node in the view came back with a higher incarnation: its old process is gone."""

    record: NodeRecord


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """A node left the view."""

    node_id: str
    incarnation: int
    reason: Departure


GossipEvent: TypeAlias = PeerJoined | PeerUpdated | PeerRestarted | PeerLeft


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer as this node sees it.

    `record.heartbeat` is the heartbeat at the time that version arrived; `heartbeat` is the
    latest one seen. `last_seen` is on the local clock: when the heartbeat last advanced.
    """

    record: NodeRecord
    heartbeat: int
    last_seen: float
    connected: bool
    status: PeerStatus


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timings and limits of the gossip engine.

    Defaults: a heartbeat every second; a linked peer is suspect after 2.5 s of silence and
    removed after 5 s, checked once a second, so a `kill -9`'d node is gone from every view
    about 6 s after its last heartbeat (requirement: 10 s) while four lost heartbeats in a row
    are still not enough for a false removal. A peer heard only through relays (no direct link:
    a sparse mesh) gets 8 s, since each relay hop may hold its news back up to one interval;
    with the sweep that is still within 10 s.
    """

    push_interval_s: float = 1.0
    suspect_after_s: float = 2.5
    dead_after_s: float = 5.0
    relayed_dead_after_s: float = 8.0
    tombstone_s: float = 30.0  # how long a departed incarnation stays buried
    # Peers that get an asking digest each interval while news must come through relays or a
    # peer is suspect; otherwise one peer gets a plain digest.
    digest_fanout: int = 3
    max_nodes: int = 512
    max_records_per_message: int = 16

    def __post_init__(self) -> None:
        if self.push_interval_s <= 0:
            raise ConfigError("push_interval_s must be positive")
        if not 0 < self.suspect_after_s <= self.dead_after_s:
            raise ConfigError("suspect_after_s must be positive and at most dead_after_s")
        if self.dead_after_s < 2 * self.push_interval_s:
            raise ConfigError("dead_after_s must span at least two push intervals")
        if self.relayed_dead_after_s < self.dead_after_s:
            raise ConfigError("relayed_dead_after_s must be at least dead_after_s")
        if self.tombstone_s < self.relayed_dead_after_s:
            raise ConfigError("tombstone_s must be at least relayed_dead_after_s")
        if self.digest_fanout < 1:
            raise ConfigError("digest_fanout must be at least 1")
        if not 1 <= self.max_nodes < MAX_TABLE_ENTRIES:
            raise ConfigError(f"max_nodes must be in [1, {MAX_TABLE_ENTRIES - 1}]")
        if not 1 <= self.max_records_per_message <= MAX_RECORDS_PER_MESSAGE:
            raise ConfigError(f"max_records_per_message must be in [1, {MAX_RECORDS_PER_MESSAGE}]")


# --------------------------------------------------------------------------------------------
# Failure detector.


@dataclass(slots=True)
class _Liveness:
    heartbeat: int
    heard_at: float  # when the heartbeat last advanced, per the freshest report
    direct_at: float  # when the node itself last reached us
    status: PeerStatus


class FailureDetector:
    """Heartbeat-progress failure detector on a caller-supplied clock.

    A node is alive while its heartbeat counter keeps advancing. Observations may be second-hand:
    `age_s` says how long ago the reporter saw that heartbeat advance, so a heartbeat relayed over
    several hops is dated from the first observer, and relaying cannot extend a dead node's life.
    A node whose latest news came through relays rather than from itself (a sparse mesh) gets
    `relay_grace_s` longer, since each relay hop may hold news back for up to a push interval.
    """

    def __init__(self, suspect_after_s: float, dead_after_s: float, relay_grace_s: float = 0.0) -> None:
        self._suspect_after_s = suspect_after_s
        self._dead_after_s = dead_after_s
        self._relay_grace_s = relay_grace_s
        self._nodes: dict[str, _Liveness] = {}

    def observe(
        self, node_id: str, heartbeat: int, now: float, age_s: float = 0.0, direct: bool = False
    ) -> bool:
        """Record that `heartbeat` of `node_id` was seen `age_s` before `now`; True if it is news.

        `direct` means the node itself told us (as opposed to a relay).
        """
        heard_at = now - age_s if age_s > 0 else now
        live = self._nodes.get(node_id)
        if live is None:
            direct_at = now if direct else float("-inf")
            self._nodes[node_id] = _Liveness(heartbeat, heard_at, direct_at, PeerStatus.ALIVE)
            return True
        if direct:
            live.direct_at = now
            if heartbeat < live.heartbeat:
                # The node itself outranks any relay: a member that relayed an inflated counter
                # would otherwise make the node's own beats look old and get it declared dead.
                live.heartbeat = heartbeat
                live.heard_at = now
                return True
        if heartbeat < live.heartbeat:
            return False  # old news, the usual case for relayed sightings
        if heartbeat > live.heartbeat:
            live.heartbeat = heartbeat
            # Never move backwards: a relayed sighting of a newer beat can be older than ours.
            if heard_at > live.heard_at:
                live.heard_at = heard_at
        elif heartbeat == live.heartbeat and heard_at > live.heard_at:
            live.heard_at = heard_at  # someone saw the same beat more recently
        else:
            return False
        if live.status is not PeerStatus.ALIVE and now - live.heard_at < self._suspect_after_s:
            logger.debug("peer %s: %s -> alive", node_id[:16], live.status.value)
            live.status = PeerStatus.ALIVE
        return True

    def forget(self, node_id: str) -> None:
        """Stop tracking a node (it left, or restarted and is tracked afresh)."""
        self._nodes.pop(node_id, None)

    def heartbeat(self, node_id: str) -> int:
        """The highest heartbeat seen for a tracked node."""
        return self._nodes[node_id].heartbeat

    def last_seen(self, node_id: str) -> float:
        """Local time at which a tracked node's heartbeat last advanced."""
        return self._nodes[node_id].heard_at

    def status(self, node_id: str) -> PeerStatus:
        """Status of a tracked node as of the last `sweep`."""
        return self._nodes[node_id].status

    def rows(self, now: float) -> list[tuple[str, int, int]]:
        """(node id, heartbeat, ms since it last advanced) for every tracked node."""
        return [(node_id, live.heartbeat, _ms(now - live.heard_at)) for node_id, live in self._nodes.items()]

    def sweep(self, now: float) -> list[tuple[str, int]]:
        """Update suspicion; return (and stop tracking) nodes silent too long, with their last beat."""
        dead: list[tuple[str, int]] = []
        grace = self._relay_grace_s
        for node_id, live in self._nodes.items():
            silent = now - live.heard_at
            if live.direct_at < live.heard_at - grace:
                silent -= grace  # heard only through relays lately
            if silent >= self._dead_after_s:
                dead.append((node_id, live.heartbeat))
            elif silent >= self._suspect_after_s and live.status is PeerStatus.ALIVE:
                logger.debug("peer %s: alive -> suspect (silent %.1f s)", node_id[:16], silent)
                live.status = PeerStatus.SUSPECT
        for node_id, _ in dead:
            del self._nodes[node_id]
        return dead

    def any_suspect(self) -> bool:
        """Whether some tracked node was suspect at the last sweep and has not been heard since."""
        return any(live.status is PeerStatus.SUSPECT for live in self._nodes.values())


# --------------------------------------------------------------------------------------------
# The engine.


@dataclass(frozen=True, slots=True)
class _Grave:
    """A departed incarnation. `heartbeat` None buries it all (goodbye); else beats up to it."""

    incarnation: int
    heartbeat: int | None
    until: float
    sig: str = ""  # the leaving node's signature of its goodbye, relayed with the grave

    def buries(self, incarnation: int, heartbeat: int) -> bool:
        if incarnation != self.incarnation:
            return incarnation < self.incarnation
        return self.heartbeat is None or heartbeat <= self.heartbeat


class GossipEngine:
    """The peer table of one node and the protocol that keeps it in step with the mesh.

    Inputs: `peer_connected`, `peer_disconnected`, `receive`, `tick`, `update_self`, `leave`.
    Each returns the messages to send now. Changes to the view are queued as events
    (`next_event`). Call `tick` at `get_timer()` (or simply every push interval).
    """

    def __init__(
        self,
        self_record: NodeRecord,
        config: GossipConfig | None = None,
        *,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        """With `verifier`, only records and relayed goodbyes signed by their own node count;
        with `signer`, this node signs its own. (Tests of pure protocol logic may omit both.)"""
        self._config = config or GossipConfig()
        self._id = self_record.node_id
        self._signer = signer
        self._verifier = verifier
        self._refused: set[tuple[str, int, int]] = set()
        self._self = self._sign(_checked_own(self_record))
        self._heartbeat = self_record.heartbeat
        self._state = EngineState.RUNNING
        self._records: dict[str, NodeRecord] = {}  # live peers, as last received (stale heartbeat)
        cfg = self._config
        grace = cfg.relayed_dead_after_s - cfg.dead_after_s
        self._detector = FailureDetector(cfg.suspect_after_s, cfg.dead_after_s, relay_grace_s=grace)
        self._graves: dict[str, _Grave] = {}
        self._pulls: dict[str, float] = {}  # node id -> when an unanswered pull may be repeated
        self._links: set[str] = set()
        self._events: deque[GossipEvent] = deque()
        self._next_push = float("-inf")
        # Start the digest round-robin at a different place on every node so no peer gets all of them.
        self._cursor = zlib.crc32(self_record.node_id.encode())
        self._handlers: dict[str, Callable[[str, Mapping[str, Any], float], list[Outgoing]]] = {
            MessageType.HB: self._on_hb,
            MessageType.DIGEST: self._on_digest,
            MessageType.PULL: self._on_pull,
            MessageType.RECORDS: self._on_records,
            MessageType.BYE: self._on_bye,
        }

    # ---- introspection ----------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._id

    @property
    def state(self) -> EngineState:
        """RUNNING, or LEFT after `leave`."""
        return self._state

    @property
    def config(self) -> GossipConfig:
        """The engine's configuration."""
        return self._config

    @property
    def self_record(self) -> NodeRecord:
        """This node's record as currently advertised (with its current heartbeat)."""
        return replace(self._self, heartbeat=self._heartbeat)

    def peers(self) -> dict[str, PeerView]:
        """The current view of the mesh, excluding this node, keyed by node id."""
        d = self._detector
        return {
            node_id: PeerView(
                record=record,
                heartbeat=d.heartbeat(node_id),
                last_seen=d.last_seen(node_id),
                connected=node_id in self._links,
                status=d.status(node_id),
            )
            for node_id, record in self._records.items()
        }

    def connected(self) -> frozenset[str]:
        """Peers with a direct link (as reported by the transport)."""
        return frozenset(self._links)

    def next_event(self) -> GossipEvent | None:
        """Pop the oldest pending view change, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When `tick` next has work to do: -inf before the first call, None once left."""
        return None if self._state is EngineState.LEFT else self._next_push

    # ---- inputs -----------------------------------------------------------------------------

    def peer_connected(self, peer_id: str, now: float) -> list[Outgoing]:
        """A direct link came up: announce ourselves and catch both sides up with one digest exchange.

        The heartbeat lets the peer pull our record if (and only if) it lacks it; usually it already
        learned it through gossip, which is why it dialed us.
        """
        if self._state is EngineState.LEFT or peer_id == self._id:
            return []
        self._links.add(peer_id)
        out: list[Outgoing] = [(peer_id, self._beat())]
        # One asking digest starts a full two-way exchange; the lower id sends it, so a new link
        # costs two digests rather than four.
        if self._id < peer_id:
            out.append((peer_id, self._digest(now, ask=True)))
        return out

    def peer_disconnected(self, peer_id: str, now: float) -> list[Outgoing]:
        """A direct link went down. The peer stays in the view while others still hear from it."""
        self._links.discard(peer_id)
        return []

    def update_self(self, now: float, **changes: Any) -> list[Outgoing]:
        """Change this node's advertised record; the new version goes to every linked peer now.

        `node_id`, `incarnation`, `version` and `heartbeat` are managed here and cannot be set.
        Raises ConfigError if peers would reject the resulting record (too large, bad values).
        """
        reserved = changes.keys() & {"node_id", "incarnation", "version", "heartbeat"}
        if reserved:
            raise ValueError(f"update_self cannot set {sorted(reserved)}")
        if self._state is EngineState.LEFT:
            logger.debug("update_self after leave ignored")
            return []
        fresh = replace(self._self, version=self._self.version + 1, signature="", signed=None, **changes)
        self._self = self._sign(_checked_own(fresh))
        if not self._links:
            return []
        msg = {"t": MessageType.RECORDS.value, "records": [self._own_item()]}
        return [(peer, msg) for peer in sorted(self._links)]

    def receive(self, peer_id: str, msg: object, now: float) -> list[Outgoing]:
        """Handle one message from a directly linked peer; return the replies.

        Unknown message types are ignored (they come from newer nodes). Raises MalformedFrame for
        a known type with a broken shape; nothing from such a message is applied.
        """
        if self._state is EngineState.LEFT or peer_id == self._id:
            return []
        m = msg if type(msg) is dict else _mapping(msg, "gossip message")
        kind = m.get("t")
        handler = self._handlers.get(kind) if type(kind) is str else None
        if handler is None:
            return []
        return handler(peer_id, m, now)

    def tick(self, now: float) -> list[Outgoing]:
        """Periodic work: expire silent peers, drop old graves, heartbeat, anti-entropy digests."""
        if self._state is EngineState.LEFT or now < self._next_push:
            return []
        interval = self._config.push_interval_s
        if self._next_push == float("-inf"):
            # The first tick only starts the schedule: whatever links exist already got our
            # heartbeat and a digest from peer_connected.
            self._next_push = now + interval
            return []
        self._next_push += interval
        if self._next_push <= now:  # we were stalled: re-anchor instead of bursting to catch up
            self._next_push = now + interval

        for node_id, last_beat in self._detector.sweep(now):
            record = self._records.pop(node_id)
            logger.info("peer %s timed out (incarnation %d)", node_id[:16], record.incarnation)
            # Bury only the beats seen so far: a falsely suspected peer returns with its next one.
            self._bury(node_id, _Grave(record.incarnation, last_beat, now + self._config.tombstone_s))
            self._events.append(PeerLeft(node_id, record.incarnation, Departure.TIMEOUT))
        for node_id in [n for n, g in self._graves.items() if g.until <= now]:
            del self._graves[node_id]
        self._pulls = {n: t for n, t in self._pulls.items() if t > now}

        self._heartbeat += 1
        if not self._links:
            return []
        beat = self._beat()
        out: list[Outgoing] = [(peer, beat) for peer in sorted(self._links)]
        # Digests go to linked peers that are alive in our view (a link to a killed process can
        # linger in the transport for a while).
        targets = sorted(self._links.intersection(self._records))
        if not targets:
            return out
        # In a full mesh everyone hears everyone first-hand and one digest per interval is enough to
        # repair lost messages. If part of our view is second-hand, its liveness reaches us only
        # through digests; and if a peer has gone quiet, others may still hear it (its link to us
        # may be the only thing failing). Then exchange digests with more peers and ask for theirs
        # back, so how fresh our news is does not depend on how many links those peers serve.
        relayed = not self._links.issuperset(self._records) or self._detector.any_suspect()
        digest = self._digest(now, ask=relayed)
        count = min(self._config.digest_fanout if relayed else 1, len(targets))
        start = self._cursor % len(targets)
        self._cursor = start + count
        out.extend((targets[(start + i) % len(targets)], digest) for i in range(count))
        return out

    def leave(self, now: float) -> list[Outgoing]:
        """Say goodbye: linked peers drop this node at once and bury this incarnation."""
        if self._state is EngineState.LEFT:
            return []
        self._set_state(EngineState.LEFT)
        inc = self._self.incarnation
        bye: dict[str, Any] = {"t": MessageType.BYE.value, "inc": inc}
        if self._signer is not None:
            bye["sig"] = self._signer(bye_signing_bytes(self._id, inc)).hex()
        return [(peer, bye) for peer in sorted(self._links)]

    # ---- message handlers -------------------------------------------------------------------

    def _on_hb(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        inc, ver, hb = msg.get("inc"), msg.get("ver"), msg.get("hb")
        if not (
            type(inc) is int and type(ver) is int and type(hb) is int and 0 <= (inc | ver | hb) <= MAX_INT
        ):
            inc = _as_int(_field(msg, "inc", "hb"), "hb.inc")  # slow path: name the broken field
            ver = _as_int(_field(msg, "ver", "hb"), "hb.ver")
            hb = _as_int(_field(msg, "hb", "hb"), "hb.hb")
        record = self._records.get(peer_id)
        if record is not None and inc == record.incarnation and ver <= record.version:
            # Every linked peer sends one of these per interval: keep the common case short.
            self._detector.observe(peer_id, hb, now, 0.0, True)
            return []
        if self._observe(peer_id, peer_id, inc, ver, hb, 0.0, now):
            return [(peer_id, {"t": MessageType.PULL.value, "ids": [peer_id]})]
        return []

    def _on_digest(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        # Validate everything before applying anything.
        raw_entries = _as_list(_field(msg, "entries", "digest"), "digest.entries", MAX_TABLE_ENTRIES)
        raw_gone = _as_list(_field(msg, "gone", "digest", ()), "digest.gone", MAX_TABLE_ENTRIES)
        entries = _digest_entries(raw_entries)
        gone = [_gone_entry(g, i) for i, g in enumerate(raw_gone)]
        ask = _field(msg, "ask", "digest", False)
        if not isinstance(ask, bool):
            raise MalformedFrame("digest.ask: expected a boolean")
        unknown_checks = _UNKNOWN_GRAVE_CHECKS
        for node_id, inc, ttl_s, sig in gone:
            grave = self._graves.get(node_id)
            if grave is not None and grave.heartbeat is None and grave.incarnation >= inc:
                continue  # already buried: no need to check the signature again
            if node_id not in self._records:
                # Graves of nodes we never knew only guard against stale gossip: check a few per
                # digest, so a flood of fake ones costs bounded CPU.
                unknown_checks -= 1
                if unknown_checks < 0:
                    continue
            if not self._bye_is_genuine(node_id, inc, sig):
                continue  # anyone could claim that a live node left: only its own word counts
            # Carry the remaining lifetime, never more than ours, so graves cannot circulate forever.
            self._apply_goodbye(node_id, inc, now, min(ttl_s, self._config.tombstone_s), sig)

        # Anti-entropy is pull-only: we fetch what the digest shows we lack, and the sender catches
        # up from the digests it receives (ours, if it asked). Pulls are de-duplicated; pushes from
        # every peer at once would not be.
        want: list[str] = []
        records = self._records
        observe = self._detector.observe
        for node_id, inc, ver, hb, age_s in entries:
            mine = records.get(node_id)
            if mine is not None and inc == mine.incarnation:
                # The common case, inlined: a peer we know, in the incarnation we know.
                observe(node_id, hb, now, age_s, node_id == peer_id)
                if ver > mine.version and self._claim_pull(node_id, now):
                    want.append(node_id)
            elif self._observe(peer_id, node_id, inc, ver, hb, age_s, now):
                want.append(node_id)

        out: list[Outgoing] = []
        if want:
            out.append((peer_id, {"t": MessageType.PULL.value, "ids": want}))
        if ask:
            out.append((peer_id, self._digest(now)))  # never asks back: no ping-pong
        return out

    def _on_pull(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        ids = _as_list(_field(msg, "ids", "pull"), "pull.ids", MAX_TABLE_ENTRIES)
        wanted = [_node_id(n, f"pull.ids[{i}]") for i, n in enumerate(ids)]
        return self._records_messages(peer_id, wanted, now)

    def _on_records(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        items = _as_list(_field(msg, "records", "records"), "records.records", MAX_RECORDS_PER_MESSAGE)
        parsed: list[tuple[NodeRecord, float]] = []
        for i, item in enumerate(items):
            m = _mapping(item, f"records[{i}]")
            record = NodeRecord.from_dict(_field(m, "r", f"records[{i}]"))
            age_ms = _as_int(_field(m, "age_ms", f"records[{i}]"), f"records[{i}].age_ms")
            parsed.append((record, age_ms / 1000))
        for record, age_s in parsed:
            self._merge(peer_id, record, age_s, now)
        return []

    def _on_bye(self, peer_id: str, msg: Mapping[str, Any], now: float) -> list[Outgoing]:
        # Straight from the leaving node over its authenticated link; the signature, when valid,
        # lets us relay the goodbye to nodes that have no link to it.
        inc = _as_int(_field(msg, "inc", "bye"), "bye.inc")
        sig = _field(msg, "sig", "bye", "")
        sig = sig if isinstance(sig, str) and self._bye_is_genuine(peer_id, inc, sig) else ""
        self._apply_goodbye(peer_id, inc, now, self._config.tombstone_s, sig)
        return []

    def _bye_is_genuine(self, node_id: str, inc: int, sig: str) -> bool:
        if self._verifier is None:
            return True
        raw = _sig_bytes(sig)
        return raw is not None and self._verifier(node_id, bye_signing_bytes(node_id, inc), raw)

    def _sign(self, record: NodeRecord) -> NodeRecord:
        if self._signer is None:
            return record
        body = {k: v for k, v in record.unsigned_dict().items() if k != "heartbeat"}
        return replace(
            record, signed=MappingProxyType(body), signature=self._signer(record_signing_bytes(body)).hex()
        )

    # ---- merge rules ------------------------------------------------------------------------

    def _observe(
        self, peer_id: str, node_id: str, inc: int, ver: int, hb: int, age_s: float, now: float
    ) -> bool:
        """Take in `peer_id`'s sighting of (inc, ver, hb); return True if we should pull that record."""
        record = self._records.get(node_id)
        if record is not None and inc == record.incarnation:  # the common case: a known live peer
            self._detector.observe(node_id, hb, now, age_s, direct=node_id == peer_id)
            return ver > record.version and self._claim_pull(node_id, now)
        if node_id == self._id:
            return False  # we are the only authority on our own record
        grave = self._graves.get(node_id)
        if grave is not None and grave.buries(inc, hb):
            return False
        if age_s >= self._config.relayed_dead_after_s:
            return False  # the reporter's news is already too old to prove anything
        if record is None:
            return len(self._records) < self._config.max_nodes and self._claim_pull(node_id, now)
        # A higher incarnation is a restart: fetch the new record.
        return inc > record.incarnation and self._claim_pull(node_id, now)

    def _claim_pull(self, node_id: str, now: float) -> bool:
        # One request in flight per node: during a join every digest names the same missing records.
        if self._pulls.get(node_id, float("-inf")) > now:
            return False
        self._pulls[node_id] = now + self._config.push_interval_s
        return True

    def _merge(self, peer_id: str, record: NodeRecord, age_s: float, now: float) -> None:
        node_id = record.node_id
        direct = node_id == peer_id
        if node_id == self._id:
            return
        current = self._records.get(node_id)
        if current is not None and record.key <= current.key:
            # No news but maybe a heartbeat (as unsigned as a digest's). Signatures cost CPU:
            # only records we would take are checked.
            if record.incarnation == current.incarnation:
                self._detector.observe(node_id, record.heartbeat, now, age_s, direct)
            return
        if self._verifier is not None and not record.signed_by_owner(self._verifier):
            key = (node_id, record.incarnation, record.version)
            if key not in self._refused and len(self._refused) < MAX_TABLE_ENTRIES:
                self._refused.add(key)
                logger.warning(
                    "ignoring a record of %s (v%d) from %s: not signed by that node",
                    node_id[:16], record.version, peer_id[:16],
                )  # fmt: skip
            return
        grave = self._graves.get(node_id)
        if grave is not None and grave.buries(record.incarnation, record.heartbeat):
            return
        if age_s >= self._config.relayed_dead_after_s:
            return
        current = self._records.get(node_id)
        if current is None:
            if len(self._records) >= self._config.max_nodes:
                return
            self._graves.pop(node_id, None)
            self._records[node_id] = record
            self._detector.forget(node_id)
            self._detector.observe(node_id, record.heartbeat, now, age_s, direct)
            logger.info("peer %s joined (incarnation %d)", node_id[:16], record.incarnation)
            self._events.append(PeerJoined(record))
        elif record.incarnation > current.incarnation:
            self._records[node_id] = record
            self._detector.forget(node_id)
            self._detector.observe(node_id, record.heartbeat, now, age_s, direct)
            logger.info("peer %s restarted (incarnation %d)", node_id[:16], record.incarnation)
            self._events.append(PeerRestarted(record))
        elif record.incarnation == current.incarnation:
            self._detector.observe(node_id, record.heartbeat, now, age_s, direct)
            if record.version > current.version:
                self._records[node_id] = record
                self._events.append(PeerUpdated(record))

    def _apply_goodbye(self, node_id: str, inc: int, now: float, ttl_s: float, sig: str = "") -> None:
        if node_id == self._id:
            return
        record = self._records.get(node_id)
        if record is not None and record.incarnation > inc:
            return  # a goodbye from an older incarnation; the node already restarted
        existing = self._graves.get(node_id)
        if existing is not None and (existing.incarnation, existing.heartbeat is None) >= (inc, True):
            return  # already buried; keeping the old deadline stops graves circulating forever
        self._bury(node_id, _Grave(inc, None, now + ttl_s, sig))
        if record is not None:
            del self._records[node_id]
            self._detector.forget(node_id)
            logger.info("peer %s said goodbye (incarnation %d)", node_id[:16], inc)
            self._events.append(PeerLeft(node_id, inc, Departure.BYE))

    # ---- helpers ----------------------------------------------------------------------------

    def _bury(self, node_id: str, grave: _Grave) -> None:
        self._graves[node_id] = grave
        if len(self._graves) > MAX_TABLE_ENTRIES:
            # Bounded memory under a flood of goodbyes: forget the grave that expires first.
            oldest = min(self._graves, key=lambda n: self._graves[n].until)
            del self._graves[oldest]

    def _beat(self) -> dict[str, Any]:
        own = self._self
        return {"t": MessageType.HB.value, "inc": own.incarnation, "ver": own.version, "hb": self._heartbeat}

    def _digest(self, now: float, ask: bool = False) -> dict[str, Any]:
        own = self._self
        records = self._records
        entries: list[list[Any]] = [[own.node_id, own.incarnation, own.version, self._heartbeat, 0]]
        for node_id, heartbeat, age_ms in self._detector.rows(now):
            record = records[node_id]
            entries.append([node_id, record.incarnation, record.version, heartbeat, age_ms])
        gone = [
            [n, g.incarnation, _ms(g.until - now), *([g.sig] if g.sig else [])]
            for n, g in self._graves.items()
            if g.heartbeat is None and (g.sig or self._verifier is None)
        ]
        return {"t": MessageType.DIGEST.value, "entries": entries, "gone": gone, "ask": ask}

    def _records_messages(self, peer_id: str, node_ids: Iterable[str], now: float) -> list[Outgoing]:
        """Records for the given ids that we know, chunked to stay within the frame limit."""
        items: list[dict[str, Any]] = []
        for node_id in node_ids:
            if node_id == self._id:
                items.append(self._own_item())
            elif node_id in self._records:
                wire = self._records[node_id].to_dict()
                wire["heartbeat"] = self._detector.heartbeat(node_id)  # the latest, not as received
                items.append({"r": wire, "age_ms": _ms(now - self._detector.last_seen(node_id))})
        size = self._config.max_records_per_message
        return [
            (peer_id, {"t": MessageType.RECORDS.value, "records": items[i : i + size]})
            for i in range(0, len(items), size)
        ]

    def _own_item(self) -> dict[str, Any]:
        wire = self._self.to_dict()
        wire["heartbeat"] = self._heartbeat
        return {"r": wire, "age_ms": 0}

    def _set_state(self, state: EngineState) -> None:
        logger.info("gossip %s: %s -> %s", self._id[:16], self._state.value, state.value)
        self._state = state


def _checked_own(record: NodeRecord) -> NodeRecord:
    """Refuse a local record that peers would reject as malformed."""
    try:
        NodeRecord.from_dict(record.to_dict())
    except MalformedFrame as exc:
        raise ConfigError(f"this node's record would be rejected by peers: {exc}") from exc
    return record


def _digest_entries(raw: Sequence[Any]) -> list[tuple[str, int, int, int, float]]:
    """Validate digest entries; the well-formed case is checked inline (one per node per digest)."""
    entries: list[tuple[str, int, int, int, float]] = []
    append = entries.append
    for i, value in enumerate(raw):
        if type(value) is list and len(value) == 5:
            node_id, inc, ver, hb, age_ms = value
            if (
                type(node_id) is str
                and type(inc) is int
                and type(ver) is int
                and type(hb) is int
                and type(age_ms) is int
                and 0 < len(node_id) <= MAX_ID_CHARS
                and 0 <= (inc | ver | hb | age_ms) <= MAX_INT  # all four in range, in one test
            ):
                append((node_id, inc, ver, hb, age_ms / 1000))
                continue
        append(_digest_entry(value, i))  # names what is wrong
    return entries


def _digest_entry(value: object, i: int) -> tuple[str, int, int, int, float]:
    what = f"digest.entries[{i}]"
    e = _as_list(value, what, 5)
    if len(e) != 5:
        raise MalformedFrame(f"{what}: expected [id, inc, ver, hb, age_ms]")
    return (
        _node_id(e[0], what),
        _as_int(e[1], what),
        _as_int(e[2], what),
        _as_int(e[3], what),
        _as_int(e[4], what) / 1000,
    )


def _gone_entry(value: object, i: int) -> tuple[str, int, float, str]:
    what = f"digest.gone[{i}]"
    g = _as_list(value, what, 4)
    if len(g) not in (3, 4):
        raise MalformedFrame(f"{what}: expected [id, inc, ttl_ms, sig?]")
    sig = _as_str(g[3], what, _SIG_HEX) if len(g) == 4 else ""
    return (_node_id(g[0], what), _as_int(g[1], what), _as_int(g[2], what) / 1000, sig)
