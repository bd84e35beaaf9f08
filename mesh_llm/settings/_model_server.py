"""The model-server child's flags: what the node passes it, written by `model_server_args` and
read by `model_server_parser`, both from this one table.

A node setting the child takes unchanged (`--parallel`, `--max-queue`, ...) is carried with its
type, default and bounds; the rest are the child's own (its socket, the model's path, the
offload a node planned) or a node value converted (`--max-body` in bytes, `--n-ctx` in tokens).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mesh_llm.models.kv import DEFAULT_CTX_SLOT
from mesh_llm.settings._node import NODE
from mesh_llm.settings._setting import Setting, add_flags, find, write_flags

MIB = 1024 * 1024


def _carried(name: str) -> Setting:
    """The node's setting ``name`` as the child takes it, under the name its `child` gives."""
    node = find(NODE, name)
    return replace(
        node, name=node.child, flag="", env=None, group="", shown="", part="model server", child=""
    )


MODEL_SERVER: tuple[Setting, ...] = (
    Setting("fd", int, required=True, help="inherited listening socket (the node's Unix socket)"),
    Setting("model", required=True, help="path to the GGUF file"),
    Setting("alias", required=True, help="model name clients use"),
    Setting("n_ctx", int, DEFAULT_CTX_SLOT, help="context window per slot, in tokens"),
    _carried("threads"),
    _carried("parallel"),
    _carried("max_queue"),
    Setting(
        "max_body", int, int(find(NODE, "max_body_mb").default * MIB), help="largest request body in bytes"
    ),
    _carried("cache_type_k"),
    _carried("cache_type_v"),
    Setting(
        "gpu_devices", metavar="CUDA0,...", help="ggml devices this process offloads to, in order"
    ),
    Setting("n_gpu_layers", int, 0, help="layers offloaded to --gpu-devices"),
    Setting("tensor_split", metavar="S0,S1,...", help="share of layers per --gpu-devices"),
    Setting(
        "auto_ctx", bool,
        help="size the context per slot by planning/offload.auto_ctx (training context, capped, within memory)",
    ),
    Setting(
        "gpu_budget", int, help="bytes the weights and KV caches may take (--max-vram), on GPUs or the CPU"
    ),
    Setting("draft", metavar="PATH|lookup", help="speculative decoding: a draft GGUF or lookup"),
    _carried("draft_max"),
    Setting("cache_ram", int, 0, help="bytes of RAM for the KV prefix cache (0: off)"),
    Setting("cache_disk", int, 0, help="bytes of disk for saved KV prefixes (0: RAM only)"),
    Setting("cache_dir", metavar="DIR", help="folder the saved KV prefixes go under, one folder per model"),
    Setting("parent_pid", int, 0, help="end when this process ends"),
    Setting("verbose", bool, help="debug logging"),
    Setting("rpc", repeat=True, metavar="HOST:PORT", help="RPC worker, in layer order"),
    Setting("layer_split", metavar="H,W1,...", help="layer counts: the host's, then one per --rpc"),
    Setting(
        "output_on", default="host", choices=("host", "last"),
        help="where the output head lives: the host (less traffic per token) or the last worker",
    ),
    Setting("rpc_timeout", float, 10.0, help="seconds to wait for each worker's HELLO"),
)  # fmt: skip


def model_server_args(values: Mapping[str, Any]) -> list[str]:
    """The model server's command-line words for ``values`` (by setting name; None: its default)."""
    return write_flags(MODEL_SERVER, values)


def model_server_parser() -> argparse.ArgumentParser:
    """The model server's argument parser, the reader of `model_server_args`."""
    parser = argparse.ArgumentParser(prog="mesh-llm-model-server")
    add_flags(parser, MODEL_SERVER)
    return parser
