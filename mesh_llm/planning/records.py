"""The checks every gossiped field goes through before anyone acts on it (pure).

Anything a peer gossips is untrusted input. Every field is checked here, once: model names
match a strict pattern (so no gossiped name can become a path or a shell word), numbers are
integers of bounded size (the wire's JSON accepts `Infinity`, which `int()` turns into an
OverflowError), counts and string lengths are capped, and node ids are 64 hex digits. A claim
that fails any check is dropped whole; the reader that owns a `log_limits.WarnOnce` says so once
per peer and model (a bounded memory, no global state). Unknown fields
are ignored, so newer nodes can add some.

The split claims, wants and declines built on these checks are in `split/claims.py`.
"""

from __future__ import annotations

import hashlib
import re

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


def is_model_name(value: object) -> bool:
    """Whether `value` is a model name a peer may gossip (never '..', '/', or a path)."""
    return isinstance(value, str) and bool(MODEL_NAME.fullmatch(value)) and ".." not in value


def model_dir_name(model: str) -> str:
    """A directory name for per-model files that no model name can steer (a hash of it)."""
    return hashlib.sha256(model.encode()).hexdigest()[:24]


def int_field(value: object, what: str, lo: int, hi: int) -> int:
    """`value` as an integer in [lo, hi] (never a bool); raises RecordError."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RecordError(f"{what} must be an integer in [{lo}, {hi}]")
    return value


def bool_field(value: object, what: str) -> bool:
    """`value` as a bool; raises RecordError."""
    if not isinstance(value, bool):
        raise RecordError(f"{what} must be true or false")
    return value
