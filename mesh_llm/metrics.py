"""Request accounting and the Prometheus text format (pure: no I/O, no clock).

The proxy records one `RequestRecord` per request it answered; `RequestMetrics` keeps the
counters and histograms that `/metrics` exposes, and `render` writes them, with the gauges the
node reads at scrape time (slots, queue, peers, RTT), in the text exposition format that
Prometheus and every compatible scraper read (version 0.0.4).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; model servers answer the first token from a few ms (cached prompt on a GPU) to
# minutes (a long prompt on a CPU split across machines).
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNKNOWN_MODEL = "(unknown)"
# Errors answered before a model name was matched to the mesh: the name is the caller's text.
_UNKNOWN_NAME_ERRORS = frozenset(
    {"model_not_found", "invalid_json", "missing_required_parameter", "invalid_value", "request_too_large"}
)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class RequestRecord:
    """What the access log says about one answered request."""

    method: str
    path: str
    model: str
    host: str  # short id of the node that answered, "" when none was chosen
    local: bool  # whether that node is this one
    status: int
    stream: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_s: float | None  # time to the first generated token (streams only)
    duration_s: float
    error: str = ""  # the error code when the request failed

    def fields(self) -> dict[str, object]:
        """The record as flat JSON-able fields (for `--log-format json`)."""
        return {
            "method": self.method,
            "path": self.path,
            "model": self.model,
            "host": self.host or None,
            "host_local": self.local,
            "status": self.status,
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 4),
            "duration_s": round(self.duration_s, 4),
            "error": self.error or None,
        }

    def line(self) -> str:
        """One human-readable access-log line (the model name is the caller's: shown escaped)."""
        model = self.model if self.model.isprintable() and len(self.model) <= 200 else repr(self.model[:200])
        where = (f"{self.host} (local)" if self.local else self.host) if self.host else "-"
        tokens = (
            f"{self.prompt_tokens if self.prompt_tokens is not None else '?'}"
            f"+{self.completion_tokens if self.completion_tokens is not None else '?'}"
        )
        ttft = f"{self.ttft_s:.3f}s" if self.ttft_s is not None else "-"
        error = f" error={self.error}" if self.error else ""
        return (
            f"{self.method} {self.path} model={model} host={where} status={self.status}"
            f"{' stream' if self.stream else ''} tokens={tokens} ttft={ttft} "
            f"duration={self.duration_s:.3f}s{error}"
        )


@dataclass
class Histogram:
    """Cumulative-bucket histogram of one label set."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1


class RequestMetrics:
    """Counters and histograms of the requests this node's API answered."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}  # (model, status) -> count
        self.tokens: dict[tuple[str, str], int] = {}  # (model, "prompt"|"completion") -> count
        self.ttft: dict[str, Histogram] = {}
        self.duration: dict[str, Histogram] = {}

    def observe(self, record: RequestRecord) -> None:
        # Any caller can send any model name; only names the mesh knows become label values.
        model = UNKNOWN_MODEL if record.error in _UNKNOWN_NAME_ERRORS else record.model
        record = replace(record, model=model)
        key = (record.model, str(record.status))
        self.requests[key] = self.requests.get(key, 0) + 1
        for kind, n in (("prompt", record.prompt_tokens), ("completion", record.completion_tokens)):
            if n:
                self.tokens[(record.model, kind)] = self.tokens.get((record.model, kind), 0) + n
        if record.ttft_s is not None:
            self.ttft.setdefault(record.model, Histogram(TTFT_BUCKETS)).observe(record.ttft_s)
        self.duration.setdefault(record.model, Histogram(DURATION_BUCKETS)).observe(record.duration_s)


@dataclass(frozen=True)
class Gauge:
    """One gauge family read at scrape time: name, help, and a value per label set."""

    name: str
    help: str
    samples: Sequence[tuple[Mapping[str, str], float]]
    kind: str = "gauge"  # or "counter", for a running total read at scrape time


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _histograms(out: list[str], name: str, help_text: str, by_model: Mapping[str, Histogram]) -> None:
    _family(out, name, "histogram", help_text)
    for model, h in sorted(by_model.items()):
        for bound, count in zip(h.bounds, h.counts, strict=True):
            out.append(f"{name}_bucket{_labels({'model': model, 'le': _number(bound)})} {count}")
        out.append(f"{name}_bucket{_labels({'model': model, 'le': '+Inf'})} {h.n}")
        out.append(f"{name}_sum{_labels({'model': model})} {_number(h.total)}")
        out.append(f"{name}_count{_labels({'model': model})} {h.n}")


def render(metrics: RequestMetrics, gauges: Iterable[Gauge] = ()) -> str:
    """The whole `/metrics` page."""
    out: list[str] = []
    _family(
        out,
        "mesh_llm_requests_total",
        "counter",
        "Requests answered by this node's API, by model and status.",
    )
    for (model, status), n in sorted(metrics.requests.items()):
        out.append(f"mesh_llm_requests_total{_labels({'model': model, 'status': status})} {n}")
    _family(out, "mesh_llm_tokens_total", "counter", "Tokens of requests answered by this node's API (prompt and completion).")  # fmt: skip
    for (model, kind), n in sorted(metrics.tokens.items()):
        out.append(f"mesh_llm_tokens_total{_labels({'model': model, 'kind': kind})} {n}")
    _histograms(out, "mesh_llm_time_to_first_token_seconds", "Seconds from a streamed request to its first token.", metrics.ttft)  # fmt: skip
    _histograms(out, "mesh_llm_request_duration_seconds", "Seconds from a request to the end of its answer.", metrics.duration)  # fmt: skip
    for gauge in gauges:
        _family(out, gauge.name, gauge.kind, gauge.help)
        for labels, value in gauge.samples:
            out.append(f"{gauge.name}{_labels(labels)} {_number(value)}")
    return "\n".join(out) + "\n"


def usage_of(content: bytes) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens from an OpenAI answer's `usage`, None where absent."""
    import json

    try:
        usage = json.loads(content).get("usage")
    except (ValueError, AttributeError, RecursionError):
        return None, None
    return _usage_pair(usage)


def _usage_pair(usage: object) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


class SseMeter:
    """Watches an OpenAI SSE answer pass through: first token, usage, ``[DONE]``.

    `feed` takes bytes split anywhere and returns the complete events to send on (the rest is
    held until its end arrives). With `drop_usage` the usage-only chunk (``"choices": []``), which
    the proxy asked for on the client's behalf, is counted and left out.
    """

    def __init__(self, *, drop_usage: bool = False) -> None:
        self.drop_usage = drop_usage
        self.first_token_at: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.token_chunks = 0  # chunks that carried generated text: the count when usage is missing
        self.done = False
        self._buffer = b""

    def feed(self, chunk: bytes, now: float) -> bytes:
        self._buffer += chunk
        out: list[bytes] = []
        while True:
            end = self._event_end(self._buffer)
            if end < 0:
                break
            event, self._buffer = self._buffer[:end], self._buffer[end:]
            if self._keep(event, now):
                out.append(event)
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        rest, self._buffer = self._buffer, b""
        return rest

    @staticmethod
    def _event_end(buffer: bytes) -> int:
        """Index just past the first complete event (its blank line), or -1."""
        ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := buffer.find(sep)) >= 0]
        return min(ends) if ends else -1

    def _keep(self, event: bytes, now: float) -> bool:
        import json

        data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data:
            return True
        if data == b"[DONE]":
            self.done = True
            return True
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            return True
        if not isinstance(payload, dict):
            return True
        choices = payload.get("choices")
        if payload.get("usage") is not None:
            self.prompt_tokens, self.completion_tokens = _usage_pair(payload["usage"])
            if self.drop_usage and choices == []:
                return False
        if isinstance(choices, list) and any(_has_token(c) for c in choices):
            self.token_chunks += 1
            if self.first_token_at is None:
                self.first_token_at = now
        return True


def _has_token(choice: object) -> bool:
    if not isinstance(choice, dict):
        return False
    if choice.get("text"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and bool(
        delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content")
    )
