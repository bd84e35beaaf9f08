"""Field parsing for gossip messages: anything structurally wrong becomes MalformedFrame.

The hard protocol limits are constants rather than config so that every node agrees on what is
well-formed; together they keep every message the engine emits under one 1 MiB frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from mesh_llm.errors import MalformedFrame

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
SIG_HEX: Final = 128  # an ed25519 signature, hex

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


def _beat_entry(value: object, i: int) -> tuple[str, int, int, int, float, str]:
    """A relayed signed beat: (id, inc, hb, up_ms, age_s, sig)."""
    what = f"digest.beats[{i}]"
    b = _as_list(value, what, 6)
    if len(b) != 6:
        raise MalformedFrame(f"{what}: expected [id, inc, hb, up_ms, age_ms, sig]")
    return (_node_id(b[0], what), _as_int(b[1], what), _as_int(b[2], what), _as_int(b[3], what),
            _as_int(b[4], what) / 1000, _as_str(b[5], what, SIG_HEX))  # fmt: skip


def _gone_entry(value: object, i: int) -> tuple[str, int, float, str]:
    what = f"digest.gone[{i}]"
    g = _as_list(value, what, 4)
    if len(g) not in (3, 4):
        raise MalformedFrame(f"{what}: expected [id, inc, ttl_ms, sig?]")
    sig = _as_str(g[3], what, SIG_HEX) if len(g) == 4 else ""
    return (_node_id(g[0], what), _as_int(g[1], what), _as_int(g[2], what) / 1000, sig)
