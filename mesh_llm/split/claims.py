"""Split claims, wants and declines: what a node publishes about split models, and what it reads
of its peers' (pure).

A node that hosts a split model publishes its *claim* (its plan and how far it got); a node asked
to serve a model that needs the mesh publishes that it *wants* it; a node whose user dropped a
model publishes that it *declined* it (it never takes it again). This module holds the schema of
all three, the encoders a node publishes with, and the strict parsers it reads peers with
(`planning/records.py` holds the field checks). Every parser here is total: any JSON value in
any field gives a value or a RecordError. Malformed entries are dropped whole, with one warning
per peer and model when the caller passes its `WarnOnce`; unknown fields are ignored, so newer
nodes can add some.

Schema of a record's `extra`:

    splits:   {model: {"epoch": int, "mode": "split"|"solo"|"waiting", "state": str,
                       "force": bool, "settled": bool, "n_layers": int,
                       "shards": [[node_id, start_layer, end_layer], ...]}}
    wants:    {model: {"force": bool}}
    declined: [model, ...]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_llm.log_limits import WarnOnce
from mesh_llm.planning.records import (
    MAX_EPOCH,
    MAX_LAYERS,
    MAX_MODELS,
    MAX_SHARDS,
    MAX_STATE_CHARS,
    MODES,
    NODE_ID,
    RecordError,
    bool_field,
    int_field,
    is_model_name,
)

Shard = tuple[str, int, int]  # (node_id, start_layer, end_layer)


@dataclass(frozen=True)
class PeerClaim:
    """A claim on a split model: the host's plan (`shards`, host first) and how far it got."""

    model: str
    epoch: int
    mode: str
    state: str
    force: bool
    settled: bool
    shards: tuple[Shard, ...]
    n_layers: int | None = field(default=None, compare=False)

    def to_record(self) -> dict[str, Any]:
        """This claim as published in `extra["splits"][model]`."""
        return {
            "epoch": self.epoch,
            "mode": self.mode,
            "settled": self.settled,
            "state": self.state,
            "force": self.force,
            "n_layers": self.n_layers,
            "shards": [list(s) for s in self.shards],
        }


@dataclass(frozen=True)
class PeerIntents:
    """Everything one record says about split models: its claims, its wants, its declines."""

    claims: Mapping[str, PeerClaim] = field(default_factory=dict)
    wants: Mapping[str, bool] = field(default_factory=dict)  # model -> forced (`--split`)
    declined: frozenset[str] = frozenset()


def _shards(value: object) -> tuple[Shard, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_SHARDS:
        raise RecordError(f"shards must be a list of at most {MAX_SHARDS}")
    out = []
    end_before = 0
    for shard in value:
        if not isinstance(shard, list | tuple) or len(shard) != 3:
            raise RecordError("a shard is [node_id, start, end]")
        node, start, end = shard
        if not isinstance(node, str) or not NODE_ID.match(node):
            raise RecordError("a shard's node id must be 64 hex digits")
        start = int_field(start, "shard start", 0, MAX_LAYERS)
        end = int_field(end, "shard end", 0, MAX_LAYERS)
        if not start < end or start != end_before:
            raise RecordError("shards must be contiguous, non-empty layer ranges from layer 0")
        end_before = end
        out.append((node, start, end))
    return tuple(out)


def parse_claim(model: object, claim: object) -> PeerClaim:
    """One claim, validated; raises RecordError."""
    if not is_model_name(model):
        raise RecordError("the model name is not a valid model name")
    assert isinstance(model, str)
    if not isinstance(claim, Mapping):
        raise RecordError("a claim must be an object")
    shards = _shards(claim.get("shards", []))
    mode = claim.get("mode", "split" if shards else "waiting")
    if not isinstance(mode, str) or mode not in MODES:  # a list or an object is unhashable
        raise RecordError(f"mode must be one of {sorted(MODES)}")
    state = claim.get("state", "")
    if not isinstance(state, str) or len(state) > MAX_STATE_CHARS:
        raise RecordError(f"state must be a string of at most {MAX_STATE_CHARS} characters")
    n_layers = claim.get("n_layers")
    return PeerClaim(
        model,
        int_field(claim.get("epoch"), "epoch", 0, MAX_EPOCH),
        mode,
        state,
        bool_field(claim.get("force", False), "force"),
        bool_field(claim.get("settled", False), "settled"),
        shards,
        n_layers if isinstance(n_layers, int) and not isinstance(n_layers, bool) else None,
    )


def peer_claims(extra: Any, peer: str = "", notices: WarnOnce | None = None) -> dict[str, PeerClaim]:
    """The valid claims in a record's `extra`; malformed ones are dropped (warned once to `notices`)."""
    splits = extra.get("splits") if isinstance(extra, Mapping) else None
    out: dict[str, PeerClaim] = {}
    if not isinstance(splits, Mapping):
        return out
    for model, claim in list(splits.items())[:MAX_MODELS]:
        try:
            out[str(model)] = parse_claim(model, claim)
        except RecordError as exc:
            if notices is not None:
                notices.warn(
                    (peer, repr(model)[:80]),
                    "ignoring a malformed split claim for %.80r from %s: %s", model, peer[:8], exc,
                )  # fmt: skip
    return out


def peer_wants(extra: Any) -> dict[str, bool]:
    """Models a peer was asked to serve as splits (name -> forced), from its record's `extra`."""
    wants = extra.get("wants") if isinstance(extra, Mapping) else None
    if not isinstance(wants, Mapping):
        return {}
    return {
        m: w["force"] if isinstance(w.get("force"), bool) else False
        for m, w in list(wants.items())[:MAX_MODELS]
        if is_model_name(m) and isinstance(w, Mapping)
    }


def peer_declined(extra: Any) -> frozenset[str]:
    """Models a peer declined (its user dropped them there); invalid names are ignored."""
    declined = extra.get("declined") if isinstance(extra, Mapping) else None
    if not isinstance(declined, list | tuple):
        return frozenset()
    return frozenset(m for m in declined[:MAX_MODELS] if is_model_name(m))


def read_intents(extra: Any, peer: str = "", notices: WarnOnce | None = None) -> PeerIntents:
    """Claims, wants and declines of one peer's record, each parsed strictly."""
    return PeerIntents(peer_claims(extra, peer, notices), peer_wants(extra), peer_declined(extra))


def intents_record(
    claims: Iterable[PeerClaim], wants: Mapping[str, bool], declined: Iterable[str]
) -> dict[str, Any]:
    """This node's claims, wants and declines as published in its record's `extra`."""
    return {
        "splits": {c.model: c.to_record() for c in sorted(claims, key=lambda c: c.model)},
        "wants": {name: {"force": force} for name, force in sorted(wants.items())},
        "declined": sorted(declined),
    }
