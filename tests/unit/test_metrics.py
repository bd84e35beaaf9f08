"""The access-log record, the SSE meter and the Prometheus text the node serves at /metrics."""

from __future__ import annotations

import json
import re

from mesh_llm.metrics import (
    Gauge,
    RequestMetrics,
    RequestRecord,
    SseMeter,
    escape_label,
    render,
    usage_of,
)

# One sample line of the text format: name, optional labels, a number.
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|\+Inf|NaN)$'
)


def record(**overrides: object) -> RequestRecord:
    fields: dict[str, object] = dict(
        method="POST", path="/v1/chat/completions", model="SmolLM2-135M", host="ab12cd34", local=True,
        status=200, stream=True, prompt_tokens=31, completion_tokens=8, ttft_s=0.04, duration_s=0.3,
    )  # fmt: skip
    fields.update(overrides)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def test_access_line_names_model_host_status_tokens_ttft_and_duration() -> None:
    line = record().line()
    assert "model=SmolLM2-135M" in line and "host=ab12cd34 (local)" in line and "status=200" in line
    assert "tokens=31+8" in line and "ttft=0.040s" in line and "duration=0.300s" in line
    unknown = record(prompt_tokens=None, completion_tokens=None, ttft_s=None, host="", status=404,
                     error="model_not_found").line()  # fmt: skip
    assert "host=-" in unknown and "tokens=?+?" in unknown and "ttft=-" in unknown
    assert "error=model_not_found" in unknown


def test_a_model_name_with_a_line_break_cannot_forge_a_log_line() -> None:
    line = record(model="x\nINFO fake line").line()
    assert "\n" not in line and "'x\\nINFO fake line'" in line


def test_render_is_valid_text_format_with_counters_and_a_ttft_histogram() -> None:
    m = RequestMetrics()
    m.observe(record())
    m.observe(record(ttft_s=2.0, duration_s=3.0, completion_tokens=2))
    m.observe(record(status=503, stream=False, ttft_s=None, prompt_tokens=None, completion_tokens=None))
    gauges = [Gauge("mesh_llm_slots", "Slots.", [({"model": "SmolLM2-135M", "state": "free"}, 4)])]
    text = render(m, gauges)
    assert text.endswith("\n")
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            assert name not in types, f"{name} declared twice"
            types[name] = kind
        elif not line.startswith("# HELP"):
            assert SAMPLE.match(line), line
    assert types["mesh_llm_requests_total"] == "counter"
    assert types["mesh_llm_time_to_first_token_seconds"] == "histogram"
    assert types["mesh_llm_slots"] == "gauge"
    assert 'mesh_llm_requests_total{model="SmolLM2-135M",status="200"} 2' in text
    assert 'mesh_llm_requests_total{model="SmolLM2-135M",status="503"} 1' in text
    assert 'mesh_llm_tokens_total{model="SmolLM2-135M",kind="completion"} 10' in text
    # Buckets are cumulative and end at +Inf with the count.
    assert 'mesh_llm_time_to_first_token_seconds_bucket{model="SmolLM2-135M",le="0.05"} 1' in text
    assert 'mesh_llm_time_to_first_token_seconds_bucket{model="SmolLM2-135M",le="2.5"} 2' in text
    assert 'mesh_llm_time_to_first_token_seconds_bucket{model="SmolLM2-135M",le="+Inf"} 2' in text
    assert 'mesh_llm_time_to_first_token_seconds_count{model="SmolLM2-135M"} 2' in text
    assert 'mesh_llm_slots{model="SmolLM2-135M",state="free"} 4' in text


def test_names_the_mesh_does_not_know_share_one_label_value() -> None:
    m = RequestMetrics()
    for i in range(50):
        m.observe(record(model=f"guess-{i}", status=404, error="model_not_found"))
    assert set(m.requests) == {("(unknown)", "404")}


def test_label_values_are_escaped() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def test_meter_finds_first_token_usage_and_done_in_any_split() -> None:
    stream = (
        sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        + sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
        + sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
        + b"data: [DONE]\n\n"
    )
    for step in (1, 7, len(stream)):
        meter = SseMeter(drop_usage=True)
        out = b""
        for i in range(0, len(stream), step):
            out += meter.feed(stream[i : i + step], now=float(i))
        out += meter.flush()
        assert meter.done and (meter.prompt_tokens, meter.completion_tokens) == (5, 1)
        assert meter.first_token_at is not None and meter.token_chunks == 1
        # The role chunk came first, but the first token is the "Hi" chunk.
        assert meter.first_token_at >= stream.index(b'"Hi"') // step * step
        assert b"usage" not in out and out.endswith(b"data: [DONE]\n\n") and b'"Hi"' in out


def test_meter_keeps_the_usage_chunk_the_client_asked_for() -> None:
    meter = SseMeter(drop_usage=False)
    chunk = sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
    assert meter.feed(chunk, 0.0) == chunk


def test_usage_of_a_whole_answer() -> None:
    assert usage_of(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}') == (3, 4)
    assert usage_of(b"not json") == (None, None)
    assert usage_of(b"[1]") == (None, None)
