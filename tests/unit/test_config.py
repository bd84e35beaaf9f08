from __future__ import annotations

import pytest

from mesh_llm.cli import node_parser
from mesh_llm.cli.render import catalog_table, human_bytes, status_view
from mesh_llm.config import GIB, api_key_from_env, build_config
from mesh_llm.errors import ConfigError


def test_defaults_bind_loopback_on_the_standard_ports() -> None:
    c = build_config(models=["SmolLM2-135M"])
    assert (c.api.host, c.api.port) == ("127.0.0.1", 9337)
    assert c.console is not None and c.console.port == 3131
    assert c.allow_download and not c.idle


def test_listen_all_binds_every_interface() -> None:
    c = build_config(listen_all=True, api_key="k")
    assert c.api.host == "0.0.0.0" and c.api_key == "k"


def test_client_never_serves_nor_downloads() -> None:
    with pytest.raises(ConfigError, match="never serve"):
        build_config(client=True, models=["x"])
    assert not build_config(client=True, join=["t"]).allow_download


def test_no_arguments_is_idle() -> None:
    assert build_config().idle


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 70000},
        {"console": -1},
        {"max_vram": 0},
        {"ctx_size": 10},
        {"threads": 0},
        {"port": 5000, "console": 5000},
    ],
)
def test_bad_values_are_config_errors(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError):
        build_config(**kwargs)


def test_max_vram_is_in_gib() -> None:
    assert build_config(max_vram=1.5).max_vram_bytes == int(1.5 * GIB)


def test_api_key_env_fallback() -> None:
    assert api_key_from_env({"MESH_LLM_API_KEY": " k "}) == "k"
    assert api_key_from_env({}) is None


def test_parser_accepts_repeatable_model_and_join() -> None:
    a = node_parser().parse_args(["--model", "A", "--model", "B", "--join", "t1", "--join", "t2", "--client"])
    assert a.model == ["A", "B"] and a.join == ["t1", "t2"] and a.client


def test_human_bytes() -> None:
    assert human_bytes(None) == "-" and human_bytes(512) == "512 B" and human_bytes(98_362_432) == "98.4 MB"


def test_status_view_renders_models_and_peers() -> None:
    from rich.console import Console

    status = {
        "short_id": "abcd1234", "role": "host", "version": "0.1.0", "state": "serving",
        "api": {"url": "http://127.0.0.1:9337/v1", "auth": True}, "capacity": {"offered_bytes": 10**9},
        "models": [{"name": "M", "state": "ready", "host": "abcd1234ffff", "port": 1, "size_bytes": 10}],
        "peers": [{"node_id": "ffff0000", "role": "worker", "state": "alive", "models": [], "rtt_ms": 1.5}],
    }  # fmt: skip
    console = Console(width=200, record=True)
    console.print(status_view(status))
    out = console.export_text()
    assert "abcd1234" in out and "API key required" in out and "1.5 ms" in out and "ffff0000" in out
    console.print(catalog_table(on_disk={"SmolLM2-135M"}))
    assert "Llama-3.3-70B" in console.export_text()


def test_status_view_shows_split_layers_epoch_and_load_time_in_full() -> None:
    from rich.console import Console

    from mesh_llm.cli.render import layer_ranges

    split = {
        "name": "Qwen2.5-32B-Instruct-Q4", "state": "ready", "mode": "split", "host": "aaaa1111", "epoch": 3,
        "load_s": 12.34, "size_bytes": 10, "requests": 7,
        "shards": [
            {"node_id": "aaaa1111ffff", "start_layer": 0, "end_layer": 40},
            {"node_id": "bbbb2222ffff", "start_layer": 40, "end_layer": 64},
        ],
    }  # fmt: skip
    solo = {"name": "M", "state": "ready", "mode": "solo", "host": "aaaa1111", "load_s": 0.8}
    assert layer_ranges(split) == "aaaa1111 0-39, bbbb2222 40-63"
    assert layer_ranges(solo) == "all"
    assert layer_ranges({"mode": "split", "layers": [10, 20]}) == "10-19"
    view = status_view({"short_id": "aaaa1111", "models": [split, solo], "capacity": {}})
    wide = Console(width=200, record=True)
    wide.print(view)
    out = wide.export_text()
    assert "split" in out and "solo" in out and "12.3 s" in out and "0.8 s" in out
    assert "aaaa1111 0-39, bbbb2222 40-63" in out and "Qwen2.5-32B-Instruct-Q4" in out
    # An 80-column terminal wraps long model names and layer lists rather than cutting them.
    narrow = Console(width=80, record=True)
    narrow.print(view)
    assert "…" not in narrow.export_text()


def test_every_part_gets_its_config_from_build_config_with_one_fit_factor() -> None:
    from mesh_llm.planning.planner import FIT_FACTOR

    c = build_config(models=["m"], split=True)
    assert c.split.force and c.planner.fit_factor == c.demand.fit_factor == FIT_FACTOR
    assert c.transport.quic_engine == "qh3" and c.planner.rtt_cap_ms == 80.0
    assert c.timing.stop_grace_s == 5.0 and c.split.join_grace_s == 3.0


def test_no_lan_keeps_discovery_to_the_relays() -> None:
    assert build_config(publish=True).discovery.lan
    args = node_parser().parse_args(["--publish", "--no-lan"])
    assert args.no_lan and not build_config(publish=True, no_lan=args.no_lan).discovery.lan
