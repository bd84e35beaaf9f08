"""Each setting is declared once (mesh_llm.settings): the CLI, build_config, the model server's
command line and docs/cli.md are made from that declaration and agree with it, and so do the
defaults of the records and of the engine. The sampling defaults likewise (engine `_sampling`)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from mesh_llm.cli import node_parser
from mesh_llm.config import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, BackendConfig, build_config
from mesh_llm.errors import ConfigError
from mesh_llm.settings import (
    MODEL_SERVER,
    NODE,
    Setting,
    find,
    flags_markdown,
    model_server_args,
    model_server_parser,
    node_default,
    with_flag_table,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "version")}


def _parsed_default(s: Setting) -> Any:
    if s.repeat:
        return []
    if s.type is bool:
        return False
    return None if s.env else s.default


@pytest.mark.parametrize("table, parser", [(NODE, node_parser()), (MODEL_SERVER, model_server_parser())])
def test_each_parser_has_one_flag_per_setting_as_declared(
    table: tuple[Setting, ...], parser: argparse.ArgumentParser
) -> None:
    actions = _actions(parser)
    assert list(actions) == [s.name for s in table]
    for s in table:
        action = actions[s.name]
        assert s.long_flag in action.option_strings and (not s.short or s.short in action.option_strings)
        assert action.default == _parsed_default(s), s.name
        assert tuple(action.choices or ()) == s.choices and action.required == s.required
        assert action.type is (None if s.type in (str, bool) else s.type), s.name
        assert (action.help == argparse.SUPPRESS) == s.hidden


def test_names_are_unique_and_the_node_flags_are_the_ones_documented() -> None:
    for table in (NODE, MODEL_SERVER):
        names = [s.name for s in table]
        assert len(names) == len(set(names))
        flags = [s.long_flag for s in table]
        assert len(flags) == len(set(flags))
    assert find(NODE, "models").long_flag == "--model" and find(NODE, "max_body_mb").long_flag == "--max-body"


def test_build_config_takes_the_parsed_flags_as_they_are() -> None:
    argv = ["--model", "m", "--parallel", "2", "--max-body", "1.5", "--allow-host", " box ", "--no-console"]
    parsed = build_config(node_parser().parse_args(argv))
    assert parsed == build_config(
        models=["m"], parallel=2, max_body_mb=1.5, allow_hosts=[" box "], no_console=True
    )
    assert parsed.backend.n_parallel == 2 and parsed.backend.max_body_bytes == int(1.5 * 1024 * 1024)
    assert parsed.allow_hosts == ("box",) and parsed.console is None
    # No flags at all: the same records as the config classes' own defaults.
    assert build_config(node_parser().parse_args([])) == build_config()
    # The prefix cache is off in a bare BackendConfig; the node's defaults turn it on.
    backend = build_config().backend
    assert 0 < backend.cache_ram_bytes <= 8 * 1024**3 and backend.cache_disk_bytes == 8 * 1024**3
    assert backend.cache_dir == Path("~/.mesh-llm/kv").expanduser()
    # Model servers' sockets: in the state dir's run/ (a bare BackendConfig: a temporary dir).
    assert backend.socket_dir == Path("~/.mesh-llm/run").expanduser() and BackendConfig().socket_dir is None
    assert backend == dataclasses.replace(
        BackendConfig(), n_ctx_auto=True, cache_ram_bytes=backend.cache_ram_bytes,
        cache_disk_bytes=backend.cache_disk_bytes, cache_dir=backend.cache_dir, socket_dir=backend.socket_dir,
    )  # fmt: skip
    assert build_config(cache_ram=0).backend.cache_disk_bytes == 0


def test_build_config_rejects_a_name_no_setting_has() -> None:
    with pytest.raises(TypeError, match="paralel"):
        build_config(paralel=2)


def test_the_records_and_the_engine_take_their_defaults_from_the_settings() -> None:
    from mesh_llm.serving.engine import DEFAULT_MAX_BODY, EngineConfig
    from mesh_llm.transport import DEFAULT_ENGINE, ENGINES, TransportConfig

    backend, engine = BackendConfig(), EngineConfig()
    assert backend.n_parallel == engine.n_slots == node_default("parallel") == 4
    assert backend.max_queue == engine.max_queue == node_default("max_queue") == 64
    assert backend.draft_max == engine.draft_max == node_default("draft_max") == 8
    assert backend.max_body_bytes == DEFAULT_MAX_BODY == node_default("max_body_mb") * 1024 * 1024
    assert (DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT) == (node_default("port"), node_default("console"))
    # The transport keeps its own engine names: they must be the ones the flag offers.
    quic = find(NODE, "quic")
    assert quic.default == DEFAULT_ENGINE == TransportConfig().quic_engine and quic.choices == ENGINES


def test_bounds_are_checked_by_build_config_naming_the_flag() -> None:
    bounded = [s for s in NODE if s.lo is not None or s.hi is not None or s.positive]
    assert {s.name for s in bounded} >= {"port", "console", "parallel", "max_queue", "draft_max", "max_vram"}
    for s in bounded:
        low = 0 if s.positive else s.type(s.lo) - 1
        with pytest.raises(ConfigError, match=s.long_flag):
            build_config(**{s.name: low})
        if s.hi is not None:
            with pytest.raises(ConfigError, match=s.long_flag):
                build_config(**{s.name: s.type(s.hi) + 1})
    with pytest.raises(ConfigError, match="--quic must be one of qh3, aioquic"):
        build_config(quic="quiche")


def test_environment_fallbacks_apply_only_when_the_flag_is_not_given() -> None:
    env = {"MESH_LLM_API_KEY": " k ", "MESH_LLM_QUIC": "aioquic"}
    from_env = build_config(node_parser().parse_args([]), environ=env)
    assert from_env.api_key == "k" and from_env.transport.quic_engine == "aioquic"
    given = build_config(node_parser().parse_args(["--api-key", "x", "--quic", "qh3"]), environ=env)
    assert given.api_key == "x" and given.transport.quic_engine == "qh3"
    assert build_config(environ={}).api_key is None and build_config().transport.quic_engine == "qh3"
    assert {s.env for s in NODE if s.env} == {"MESH_LLM_API_KEY", "MESH_LLM_QUIC"}


def _sample(s: Setting) -> Any:
    """A value for ``s`` that is not its default."""
    if s.type is bool:
        return True
    if s.repeat:
        return ["127.0.0.1:50052", "10.0.0.2:50052"]
    if s.choices:
        return next(c for c in s.choices if c != s.default)
    if s.type is str:
        return f"{s.name}-value"
    return s.type(7 if s.default != 7 else 8)


def test_the_model_server_reads_back_every_value_the_node_writes() -> None:
    values = {s.name: _sample(s) for s in MODEL_SERVER}
    assert vars(model_server_parser().parse_args(model_server_args(values))) == values
    # Left out: the reader's defaults, which are the node's where the node's setting is carried.
    required = {"fd": 3, "model": "m.gguf", "alias": "m"}
    bare = vars(model_server_parser().parse_args(model_server_args(required)))
    assert bare == {**{s.name: _parsed_default(s) for s in MODEL_SERVER}, **required}
    assert bare["max_body"] == BackendConfig().max_body_bytes and bare["n_ctx"] == BackendConfig().n_ctx
    with pytest.raises(TypeError, match="no such setting"):
        model_server_args({"paralel": 2})


def test_node_settings_carried_to_the_model_server_keep_type_default_and_bounds() -> None:
    carried = {s.name: s.child for s in NODE if s.child}
    assert set(carried.values()) <= {s.name for s in MODEL_SERVER}
    # Converted on the way: a context size (or none: sized), megabytes to bytes, a draft spec to a path.
    converted = {"ctx_size", "max_body_mb", "draft", "cache_ram", "cache_disk"}  # GB become bytes
    assert converted <= set(carried)
    for name, child_name in carried.items():
        if name not in converted:
            node, child = find(NODE, name), find(MODEL_SERVER, child_name)
            assert (child.type, child.default, child.lo, child.hi) == (
                node.type,
                node.default,
                node.lo,
                node.hi,
            )


def test_a_model_servers_command_carries_its_config(tmp_path: Path) -> None:
    from mesh_llm.models.resolve import ResolvedModel
    from mesh_llm.serving.model_server import ModelServer

    config = BackendConfig(n_ctx=2048, n_parallel=3, max_queue=9, n_threads=5, draft="lookup", draft_max=4)
    server = ModelServer(
        ResolvedModel("m", tmp_path / "m.gguf", 1), config, tmp_path, gpus=[("CUDA0", 1 << 30)]
    )
    try:
        command = server._command()
    finally:
        server._listener.close()
    assert command[1:3] == ["-m", "mesh_llm.serving.model_server_main"]
    args = model_server_parser().parse_args(command[3:])
    assert (args.alias, args.model, args.n_ctx, args.parallel, args.max_queue) == (
        "m",
        str(tmp_path / "m.gguf"),
        2048,
        3,
        9,
    )
    assert (args.n_threads, args.max_body, args.draft, args.draft_max) == (
        5,
        config.max_body_bytes,
        "lookup",
        4,
    )
    assert args.gpu_devices == "CUDA0" and args.auto_ctx is False and args.rpc == []


def test_docs_cli_flag_table_is_the_one_made_from_the_settings() -> None:
    text = DOCS.read_text()
    assert with_flag_table(text) == text, "run: python -m mesh_llm.settings --write docs/cli.md"
    shown = [s for s in NODE if not s.hidden]
    table = flags_markdown()
    assert all(f"`{s.long_flag}" in table or f", {s.long_flag}" in table for s in shown)
    assert table.count("\n| `") == len(shown)


def test_the_help_states_each_default_once_from_the_declaration() -> None:
    text = " ".join(node_parser().format_help().split())
    for s in NODE:
        if s.default is not None and not s.hidden and s.type is not bool and not s.repeat:
            assert f"(default {s.default_text()})" in text, s.name


def test_sampling_defaults_are_declared_once_for_options_and_the_sampler() -> None:
    from mesh_llm.serving.engine._llama import SamplerSpec
    from mesh_llm.serving.engine._openai import Options, RequestError, parse_options
    from mesh_llm.serving.engine._sampling import Sampling, bounded_fields, sampling_of

    declared = sampling_of(Sampling())
    assert declared["temperature"] == 0.8 and declared["top_k"] == 40 and declared["min_p"] == 0.05
    assert sampling_of(Options()) == sampling_of(SamplerSpec()) == declared
    assert sampling_of(parse_options({}, chat=True, n_vocab=10)) == declared
    for f in bounded_fields():
        with pytest.raises(RequestError, match=f.name):
            parse_options({f.name: f.metadata["hi"] + 1}, chat=True, n_vocab=10)
        edge = parse_options({f.name: f.metadata["lo"]}, chat=True, n_vocab=10)
        assert getattr(edge, f.name) == f.metadata["lo"]
    options = dataclasses.replace(Options(), temperature=0.1, top_k=3, seed=5, min_tokens=2)
    assert sampling_of(options)["top_k"] == 3 and options.min_tokens == 2


def test_each_node_setting_names_the_part_it_configures() -> None:
    parts = {s.part for s in NODE}
    assert parts == {"node", "mesh", "discovery", "api", "transport", "backend", "split", "log"}
    assert {s.name for s in NODE if s.part == "log"} == {"verbose", "log_format"}  # the CLI's own


def test_the_table_is_printed_and_written_by_python_m_mesh_llm_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mesh_llm.settings.__main__ import main

    assert main(["--markdown"]) == 0 and capsys.readouterr().out == flags_markdown()
    stale = tmp_path / "cli.md"
    stale.write_text("# CLI\n\n## Flags\n\n| old |\n\n## Commands\n\nkept\n")
    assert main(["--write", str(stale)]) == 0
    assert stale.read_text() == f"# CLI\n\n## Flags\n\n{flags_markdown()}\n## Commands\n\nkept\n"
