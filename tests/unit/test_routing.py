from __future__ import annotations

import httpx
import pytest

from mesh_llm import http_errors as api_errors
from mesh_llm.api.routing import Endpoint, choose
from mesh_llm.errors import (
    BackendUnavailable,
    ConfigError,
    DownloadError,
    ModelError,
    ModelNotFound,
    NoHealthyHost,
    PeerUnreachable,
    RequestRejected,
    TransportError,
    UnknownModelError,
)


def ep(model: str, node: str, ready: bool = True, in_flight: int = 0, state: str = "ready") -> Endpoint:
    return Endpoint(model, node, ready, in_flight, state=state)


def test_unknown_model_fails_closed_listing_what_exists() -> None:
    with pytest.raises(ModelNotFound) as info:
        choose("gpt-4", [ep("Qwen2.5-3B", "a"), ep("SmolLM2-135M", "b")])
    assert info.value.available == ["Qwen2.5-3B", "SmolLM2-135M"]
    assert "Qwen2.5-3B, SmolLM2-135M" in str(info.value)


def test_never_routes_to_another_model() -> None:
    order = choose("SmolLM2-135M", [ep("Qwen2.5-3B", "a"), ep("SmolLM2-135M", "b", in_flight=9)])
    assert [e.node_id for e in order] == ["b"]


def test_name_match_ignores_case_and_separators() -> None:
    assert choose("smollm2_135m", [ep("SmolLM2-135M", "a")])[0].node_id == "a"


def test_known_but_not_ready_is_no_healthy_host() -> None:
    with pytest.raises(NoHealthyHost, match="restarting"):
        choose("M", [ep("M", "a", ready=False, state="restarting")])


def test_least_loaded_first_and_equal_loads_rotate() -> None:
    eps = [ep("M", "a", in_flight=2), ep("M", "b"), ep("M", "c")]
    assert choose("M", eps)[0].node_id in {"b", "c"}
    firsts = {choose("M", eps, rotation=r)[0].node_id for r in range(4)}
    assert firsts == {"b", "c"}
    assert choose("M", eps, rotation=0)[-1].node_id == "a"


def test_not_ready_hosts_are_skipped() -> None:
    assert [e.node_id for e in choose("M", [ep("M", "a", ready=False), ep("M", "b")])] == ["b"]


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ModelNotFound("x", ["y"]), 404, "model_not_found"),
        (NoHealthyHost("x", "loading"), 503, "model_not_ready"),
        (BackendUnavailable("crashed"), 503, "backend_unavailable"),
        (ConfigError("bad"), 400, "invalid_request"),
        (UnknownModelError("nope"), 404, "model_not_found"),
        (ModelError("no copy here"), 404, "model_unavailable"),
        (DownloadError("hub down"), 502, "download_failed"),
        (PeerUnreachable("gone"), 504, "peer_unreachable"),
        (TransportError("reset"), 502, "mesh_error"),
        (RequestRejected("busy", code="queue_full", status=503, retry_after_s=1), 503, "queue_full"),
        (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
        (httpx.ConnectTimeout("slow"), 504, "upstream_timeout"),
        (httpx.PoolTimeout("full"), 503, "upstream_busy"),
        (httpx.ConnectError("refused"), 502, "upstream_unreachable"),
        (httpx.RemoteProtocolError("eof"), 502, "upstream_failed"),
        (RuntimeError("boom"), 500, "internal_error"),
    ],
)
def test_each_error_maps_to_one_openai_error(exc: Exception, status: int, code: str) -> None:
    err = api_errors.from_exception(exc)
    assert err.status == status and err.code == code
    body = err.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    if status == 503:
        assert int(err.headers["Retry-After"]) > 0


def test_sse_error_event_is_one_data_line() -> None:
    raw = api_errors.sse_error_event("stopped")
    assert raw.startswith(b"data: {") and raw.endswith(b"\n\n") and raw.count(b"\n") == 2


def test_a_suspect_host_goes_last_however_idle() -> None:
    hosts = [Endpoint("m", "a", True, 0, suspect=True), ep("m", "b", in_flight=3), ep("m", "c", in_flight=1)]
    assert [e.node_id for e in choose("m", hosts)] == ["c", "b", "a"]


def test_a_model_with_only_suspect_hosts_is_still_tried() -> None:
    assert [e.node_id for e in choose("m", [Endpoint("m", "a", True, suspect=True)])] == ["a"]
