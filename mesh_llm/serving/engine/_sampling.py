"""The sampling parameters a request may set, declared once: name, type, default and bounds (pure).

`Options` (what a request asks, `_openai`) and `SamplerSpec` (what a sampler chain is built from,
`_llama`) both extend `Sampling`, so a default is written here only; `_openai` reads each field
from a request body within the bounds here, and `_http` hands them on by `sampling_of`.
Defaults follow llama.cpp's server where OpenAI has none (top_k 40, min_p 0.05) and for
temperature (0.8), since a small local model sampled at 1.0 with no truncation rambles.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any


def _within(lo: float, hi: float, *, integer: bool = False) -> Any:
    return {"lo": lo, "hi": hi, "integer": integer}


@dataclass(frozen=True)
class Sampling:
    """The request's sampling fields; each bounded one carries its range in its metadata."""

    temperature: float = field(default=0.8, metadata=_within(0.0, 5.0))
    top_p: float = field(default=0.95, metadata=_within(0.0, 1.0))
    top_k: int = field(default=40, metadata=_within(0, 1 << 20, integer=True))
    min_p: float = field(default=0.05, metadata=_within(0.0, 1.0))
    repeat_penalty: float = field(default=1.0, metadata=_within(0.01, 10.0))
    presence_penalty: float = field(default=0.0, metadata=_within(-2.0, 2.0))
    frequency_penalty: float = field(default=0.0, metadata=_within(-2.0, 2.0))
    seed: int | None = field(default=None, metadata=_within(-(1 << 63), (1 << 64) - 1, integer=True))
    logit_bias: tuple[tuple[int, float], ...] = ()  # checked against the vocabulary by _openai


def bounded_fields() -> tuple[Field[Any], ...]:
    """`Sampling`'s fields read from a request body as a number within their bounds."""
    return tuple(f for f in fields(Sampling) if "lo" in f.metadata)


def sampling_of(options: Sampling) -> dict[str, Any]:
    """The sampling fields of ``options`` (an `Options` or any other `Sampling`), by name."""
    return {f.name: getattr(options, f.name) for f in fields(Sampling)}
