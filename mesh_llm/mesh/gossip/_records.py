"""What a node advertises (NodeRecord, ModelAd), and the bytes its owner signs."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from mesh_llm.errors import ConfigError, MalformedFrame
from mesh_llm.mesh.gossip._fields import (
    MAX_ADDRESSES,
    MAX_DEMAND,
    MAX_MODELS,
    MAX_ON_DISK,
    MAX_PORT,
    MAX_RECORD_BYTES,
    SIG_HEX,
    _as_int,
    _as_list,
    _as_str,
    _field,
    _frozen,
    _mapping,
    _node_id,
)

_MODEL_KEYS: Final = frozenset(
    {"name", "ready", "role", "layers", "port", "in_flight", "free_slots", "prefixes"}
)
MAX_SLOTS: Final = 1024
MAX_PREFIXES: Final = 16  # prefix digests a host advertises per model: 16 x 19 bytes
PREFIX_CHARS: Final = 16  # one digest: lowercase hex (mesh_llm/api/prefix.py writes them)
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
        "observed",
        "nat",
        "sig",
    }
)
_RECORD_LABEL: Final = b"mesh-llm record v1\0"
_BYE_LABEL: Final = b"mesh-llm bye v1\0"
_BEAT_LABEL: Final = b"mesh-llm beat v1\0"

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


def beat_signing_bytes(node_id: str, incarnation: int, heartbeat: int, up_ms: int) -> bytes:
    """What a node signs with each heartbeat: the counter and how long it has been running (its
    own monotonic clock), so that a relay can vouch for its liveness, nobody can make a dead
    node's counter advance, and no beat can be credited more time than passed at its owner."""
    return _BEAT_LABEL + f"{node_id}:{incarnation}:{heartbeat}:{up_ms}".encode()


def _sig_bytes(value: object) -> bytes | None:
    if not isinstance(value, str) or len(value) != SIG_HEX or not all(c in "0123456789abcdef" for c in value):
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
    prefixes: tuple[str, ...] = ()  # digests of conversations a host served lately, newest first

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))
        object.__setattr__(self, "prefixes", tuple(self.prefixes))
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
            **({"prefixes": list(self.prefixes)} if self.prefixes else {}),
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
            prefixes=prefix_digests(_field(d, "prefixes", what, ()), f"{what}.prefixes"),
        )


def prefix_digests(value: object, what: str = "prefixes") -> tuple[str, ...]:
    """A host's advertised prefix digests: at most MAX_PREFIXES lowercase-hex strings of
    PREFIX_CHARS. Any other JSON value raises MalformedFrame."""
    items = _as_list(value, what, MAX_PREFIXES)
    for i, item in enumerate(items):
        if not (
            isinstance(item, str) and len(item) == PREFIX_CHARS and all(c in "0123456789abcdef" for c in item)
        ):
            raise MalformedFrame(f"{what}[{i}]: expected {PREFIX_CHARS} lowercase hex digits")
    return tuple(items)


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
    observed: tuple[str, ...] = ()  # where peers see this node, if not at its own addresses (NAT)
    nat: str = ""  # "none", "endpoint-independent", "symmetric", "unknown"; "" before any report
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields from newer versions, kept as-is
    # The owner's signature over `signed`: the record exactly as the owner encoded it, minus its
    # heartbeat. Relays pass that form on unchanged, so the signature checks wherever it goes.
    signature: str = field(default="", compare=False)
    signed: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Freeze containers: records are shared with callers and must never change under the engine.
        object.__setattr__(self, "addresses", tuple(self.addresses))
        object.__setattr__(self, "observed", tuple(self.observed))
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
            "observed": list(self.observed),
            "nat": self.nat,
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
            observed=text_list("observed", MAX_ADDRESSES),
            nat=_as_str(_field(d, "nat", what, ""), f"{what}.nat", 32),
            extra={k: v for k, v in d.items() if k not in _RECORD_KEYS},
            signature=_as_str(_field(d, "sig", what, ""), f"{what}.sig", SIG_HEX),
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


def _checked_own(record: NodeRecord) -> NodeRecord:
    """Refuse a local record that peers would reject as malformed."""
    try:
        NodeRecord.from_dict(record.to_dict())
    except MalformedFrame as exc:
        raise ConfigError(f"this node's record would be rejected by peers: {exc}") from exc
    return record
