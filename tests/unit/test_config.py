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
    assert a.models == ["A", "B"] and a.join == ["t1", "t2"] and a.client


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


def test_the_default_context_is_the_training_context_capped_and_within_memory() -> None:
    from mesh_llm.planning.offload import MAX_AUTO_CTX, auto_ctx

    per_token = 24_576.0  # SmolLM2-135M's f16 KV per token (30 layers x 3 heads x 64 x 2 x 2 bytes)
    plenty = 64 * GIB
    assert auto_ctx(plenty, per_token, 4, n_ctx_train=8192, fallback=4096) == 8192  # the training context
    assert auto_ctx(plenty, per_token, 4, n_ctx_train=131072, fallback=4096) == MAX_AUTO_CTX == 32768
    # What memory holds for every slot after the weights: 2 GiB less the 512 MiB reserve, over 4 slots.
    assert auto_ctx(2 * GIB, per_token, 4, n_ctx_train=131072, fallback=4096) == 16384
    assert auto_ctx(None, per_token, 4, n_ctx_train=2048, fallback=4096) == 2048  # memory unknown


def test_a_fixed_context_beyond_the_training_context_is_warned_about() -> None:
    from mesh_llm.models.kv import context_warning, training_context

    meta = {"general.architecture": "llama", "llama.context_length": 8192}
    assert training_context(meta) == 8192 and training_context({}) == 0
    assert context_warning("SmolLM2-135M", 8192, 8192) is None
    assert context_warning("SmolLM2-135M", 4096, 0) is None  # nothing known: nothing to say
    warning = context_warning("SmolLM2-135M", 32768, 8192)
    assert warning is not None and "SmolLM2-135M" in warning and "--ctx-size 8192" in warning


def test_a_context_is_sized_unless_given_and_the_help_states_the_rule() -> None:
    solo = build_config(models=["m"]).backend
    assert solo.n_ctx_auto and solo.n_ctx == 4096  # 4096: what fit decisions count
    assert not build_config(models=["m"], ctx_size=2048).backend.n_ctx_auto
    assert not build_config(models=["a", "b"]).backend.n_ctx_auto
    text = " ".join(node_parser().format_help().split())
    assert "training context, at most 32768" in text and "on GPUs and the CPU" in text
