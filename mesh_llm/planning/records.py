"""Peers' split claims, wants and declines, parsed strictly from their gossip records (pure).

Anything a peer gossips is untrusted input. Every field is checked here, once: model names
match a strict pattern (so no gossiped name can become a path or a shell word), numbers are
integers of bounded size (the wire's JSON accepts `Infinity`, which `int()` turns into an
OverflowError), counts and string lengths are capped, and node ids are 64 hex digits. A claim
that fails any check is dropped whole, with one warning per peer and model. Unknown fields
are ignored, so newer nodes can add some.

Schema of a record's `extra` (what `SplitManager` publishes):

    splits:   {model: {"epoch": int, "mode": "split"|"solo"|"waiting", "state": str,
                       "force": bool, "settled": bool, "n_layers": int,
                       "shards": [[node_id, start_layer, end_layer], ...]}}
    wants:    {model: {"force": bool}}
    declined: [model, ...]
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
NODE_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_EPOCH = 2**53  # epochs are counters; anything bigger is forged or broken
MAX_LAYERS = 10_000
MAX_SHARDS = 64
MAX_MODELS = 64
MAX_STATE_CHARS = 300
MODES = frozenset({"split", "solo", "waiting"})


class RecordError(ValueError):
    """A gossiped field that is not what the schema allows."""


@dataclass(frozen=True)
class PeerClaim:
    """A peer's published claim on a split model, parsed from its gossip record."""

    model: str
    epoch: int
    mode: str
    state: str
    force: bool
    settled: bool
    shards: tuple[tuple[str, int, int], ...]


def is_model_name(value: object) -> bool:
    """Whether `value` is a model name a peer may gossip (never '..', '/', or a path)."""
    return isinstance(value, str) and bool(MODEL_NAME.fullmatch(value)) and ".." not in value


def model_dir_name(model: str) -> str:
    """A directory name for per-model files that no model name can steer (a hash of it)."""
    return hashlib.sha256(model.encode()).hexdigest()[:24]


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RecordError(f"{what} must be an integer in [{lo}, {hi}]")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise RecordError(f"{what} must be true or false")
    return value


def _shards(value: object) -> tuple[tuple[str, int, int], ...]:
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
        start = _int(start, "shard start", 0, MAX_LAYERS)
        end = _int(end, "shard end", 0, MAX_LAYERS)
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
    if mode not in MODES:
        raise RecordError(f"mode must be one of {sorted(MODES)}")
    state = claim.get("state", "")
    if not isinstance(state, str) or len(state) > MAX_STATE_CHARS:
        raise RecordError(f"state must be a string of at most {MAX_STATE_CHARS} characters")
    return PeerClaim(
        model,
        _int(claim.get("epoch"), "epoch", 0, MAX_EPOCH),
        str(mode),
        state,
        _bool(claim.get("force", False), "force"),
        _bool(claim.get("settled", False), "settled"),
        shards,
    )


_warned: set[tuple[str, str]] = set()


def _warn_once(key: tuple[str, str], message: str) -> None:
    if key not in _warned:  # records are re-read many times a second: say it once
        _warned.add(key)
        log.warning("%s", message)


def peer_claims(extra: Any, peer: str = "") -> dict[str, PeerClaim]:
    """The valid claims in a record's `extra`; malformed ones are dropped (and warned once)."""
    splits = extra.get("splits") if isinstance(extra, Mapping) else None
    out: dict[str, PeerClaim] = {}
    if not isinstance(splits, Mapping):
        return out
    for model, claim in list(splits.items())[:MAX_MODELS]:
        try:
            out[str(model)] = parse_claim(model, claim)
        except RecordError as exc:
            _warn_once(
                (peer, repr(model)[:80]),
                f"ignoring a malformed split claim for {model!r:.80} from {peer[:8]}: {exc}",
            )
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
    """Models a peer declined (was asked to drop); invalid names are ignored."""
    declined = extra.get("declined") if isinstance(extra, Mapping) else None
    if not isinstance(declined, list | tuple):
        return frozenset()
    return frozenset(m for m in declined[:MAX_MODELS] if is_model_name(m))
