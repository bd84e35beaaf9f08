"""Entry point of a model-server subprocess: mesh-llm's own engine on an inherited socket.

Run as `python -m mesh_llm.serving.model_server_main --fd N --model PATH --alias NAME ...`. The
parent node opens the listening socket and passes its descriptor: a Unix socket that only the
node's user can open (see serving/local_socket.py), whose path is known before the child starts,
stays the same across restarts, and no other process can race for. The
child loads the model with llama-cpp-python's low-level API, starts the continuous-batching
engine (`--parallel` slots of `--n-ctx` tokens each) and serves OpenAI's /v1 routes, plus
/mesh/health, /mesh/slots and, on split hosts, /mesh/placement.

Split hosts add `--rpc HOST:PORT` once per RPC worker and `--layer-split H,W1,W2,...` (host
first, then one count per worker in the same order): the host keeps layers [0, H) on its CPU
(on the first `--gpu-devices` GPU when given), the first worker the next W1 layers, and so on. After loading, the placement llama.cpp really
made is checked against the split (a mismatch exits), logged, and served at /mesh/placement. A
worker connection that closes ends the process at once (exit code 4), so its supervisor
learns of a lost worker within a second instead of at the next request.

`--draft PATH` loads a draft model next to the model, on this process's own devices only (never
a split's RPC workers, so drafting costs no round trips), and `--draft lookup` drafts by prompt
lookup; a draft whose vocabulary differs from the model's exits with code 5 and says why.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mesh_llm.errors import ConfigError, MeshError
from mesh_llm.serving.process import die_with_parent
from mesh_llm.settings import model_server_parser

if TYPE_CHECKING:
    from mesh_llm.serving.engine import Drafter, Model


def _parse(argv: list[str] | None) -> argparse.Namespace:
    # The flags are declared with the node's, in mesh_llm.settings, which also writes them.
    return model_server_parser().parse_args(argv)


EXIT_RPC_UNUSABLE = 3  # a worker did not answer, or llama.cpp did not place layers as planned
EXIT_RPC_LOST = 4  # a worker's connection closed after the model had loaded
EXIT_BAD_DRAFT = 5  # the draft model cannot draft for this model


_MISDIRECTED = json.dumps(
    {"error": {"message": "this server answers only for this machine's names", "type": "invalid_request_error",
               "param": None, "code": "misdirected_request"}}
).encode()  # fmt: skip


def _for_this_machine(host: str) -> bool:
    """Whether a Host header names this machine: localhost or a loopback address, any port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def this_machine_only(app: Any) -> Any:
    """Wrap the model server's ASGI app so that a request naming another host gets 421.

    The node's proxy and the mesh tunnel address it as localhost; a DNS-rebinding page that
    reached its socket would name its own domain, and is refused here as on the node's API
    (a second fence: the socket itself is not reachable from a browser).
    """

    async def guard(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not _for_this_machine(host):
                await send({"type": "http.response.start", "status": 421,
                            "headers": [(b"content-type", b"application/json")]})  # fmt: skip
                await send({"type": "http.response.body", "body": _MISDIRECTED})
                return
        await app(scope, receive, send)

    return guard


def _fail(message: str, code: int) -> int:
    print(f"mesh-llm model server: {message}", file=sys.stderr, flush=True)
    return code


def _load_draft(spec: str | None, model: Model, gpus: Sequence[str] = ()) -> Model | Drafter | None:
    """The draft `--draft` asks for: a lookup drafter, a loaded draft model (on the first of
    ``gpus``), or None. A draft model's context is sized later, with the model's."""
    from pathlib import Path

    from mesh_llm.planning.offload import draft_offload
    from mesh_llm.serving.engine import LOOKUP, LookupDrafter, Model, check_vocab

    if spec is None:
        return None
    if spec == LOOKUP:
        return LookupDrafter()
    path = Path(spec)
    # Devices are chosen explicitly by a split host's hook; a draft with no offloaded layers
    # stays on this process's CPU whatever that hook lists. With GPUs it goes on the first one.
    plan = draft_offload([(name, 0) for name in gpus])
    draft = Model(path, n_gpu_layers=plan.n_gpu_layers, devices=plan.devices) if plan else Model(path)
    try:
        check_vocab(
            model.vocab_pieces(), draft.vocab_pieces(), model.special_ids(), draft.special_ids(), path.name
        )
    except MeshError:
        draft.close()
        raise
    print(f"mesh-llm draft: {path.name} drafts for {model.n_layer}-layer model", file=sys.stderr, flush=True)
    return draft


def _host_gpus(gpus: Sequence[str]) -> list[tuple[str, int]]:
    """``(name, free bytes)`` of the chosen GPUs, in the order given."""
    if not gpus:
        return []
    from mesh_llm.serving.devices import registry_devices

    free = {d.name: d.free_bytes for d in registry_devices()}
    return [(name, free.get(name, 0)) for name in gpus]


def _tied_embeddings(path: str) -> bool:
    """Whether the model's output head is its input embedding table (no ``output.weight``)."""
    from pathlib import Path

    from mesh_llm.serving.rpc.cache import gguf_tensors

    return all(e.tensor != "output.weight" for e in gguf_tensors(Path(path)))


def _gpu_free(gpus: Sequence[str]) -> int:
    return sum(free for _, free in _host_gpus(gpus))


def _free_memory(gpus: Sequence[str]) -> int:
    """Memory free now where the KV caches will live: the chosen GPUs, else the machine's RAM."""
    if gpus:
        return _gpu_free(gpus)
    import psutil

    return int(psutil.virtual_memory().available)


def _auto_ctx(
    models: Sequence[Model], gpus: Sequence[str], free_before: int, args: argparse.Namespace
) -> int:
    """Per-slot context by planning/offload.auto_ctx: the smallest training context among the
    loaded models (the model's and a draft's), capped, within what the memory left after their
    weights holds and within ``--gpu-budget``. Every model's KV cache and attention compute
    buffer count per token, since each slot has one of each.

    On GPUs the weights are what loading took from free memory. On the CPU llama.cpp maps the
    file, and mapped pages still count as available, so the files' sizes are taken off instead.
    """
    from mesh_llm.planning.offload import (
        DEFAULT_CACHE_TYPE,
        auto_ctx,
        compute_bytes_per_token,
        context_memory,
        kv_bytes_per_token,
    )
    from mesh_llm.serving.engine import EngineConfig

    if gpus:
        free = _gpu_free(gpus)
        weights = max(0, free_before - free)
    else:
        weights = sum(m.path.stat().st_size for m in models)
        free = max(0, free_before - weights)
    memory = None if free_before <= 0 else context_memory(free, weights, args.gpu_budget)
    kinds = {
        "type_k": args.cache_type_k or DEFAULT_CACHE_TYPE,
        "type_v": args.cache_type_v or DEFAULT_CACHE_TYPE,
    }
    engine = EngineConfig(n_slots=args.parallel, draft_max=args.draft_max)
    # The model verifies drafts of either kind; a draft model's own context never drafts.
    batches = [engine.batch_size(drafting=args.draft is not None), engine.batch_size(drafting=False)]
    per_token = sum(
        kv_bytes_per_token(m.n_layer, m.n_head_kv, m.head_dim_k, m.head_dim_v, **kinds)
        + compute_bytes_per_token(m.n_head, n_batch)
        for m, n_batch in zip(models, batches, strict=False)
    )
    ceiling = min(m.n_ctx_train for m in models)
    n_ctx = auto_ctx(memory, per_token, args.parallel, n_ctx_train=ceiling, fallback=args.n_ctx)
    print(
        f"mesh-llm context: {n_ctx} tokens per slot x {args.parallel} (training context {ceiling}; "
        f"{(memory or 0) / 2**30:.1f} GiB for KV caches and attention on {','.join(gpus) or 'CPU'} "
        "after the weights)",
        file=sys.stderr,
        flush=True,
    )
    return n_ctx


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    gpus = [g for g in (args.gpu_devices or "").split(",") if g]
    split = None
    capture = None
    if args.rpc or args.layer_split:
        # A lost worker makes ggml abort; without this it first runs gdb for a backtrace.
        os.environ.setdefault("GGML_NO_BACKTRACE", "1")
        from mesh_llm.planning.placement import parse_placement
        from mesh_llm.serving.rpc.host_split import LlamaLogCapture, prepare_host_split, watch_rpc_connections

        try:
            if not args.rpc or not args.layer_split:
                raise ConfigError("--rpc and --layer-split go together")
            counts = [int(c) for c in args.layer_split.split(",")]
            split = prepare_host_split(
                args.rpc, counts, output_on_host=args.output_on == "host", probe_timeout=args.rpc_timeout,
                host_gpus=_host_gpus(gpus), tied_embeddings=_tied_embeddings(args.model) if gpus else True,
            )  # fmt: skip
        except (MeshError, ValueError) as exc:
            return _fail(str(exc), EXIT_RPC_UNUSABLE)
        capture = LlamaLogCapture()

    import uvicorn

    from mesh_llm.planning.offload import cache_type
    from mesh_llm.serving.engine import EngineConfig, Model, ServerInfo, build_app

    sized = bool(args.auto_ctx and not split)
    free_before = _free_memory(gpus) if sized else 0
    try:
        type_k = cache_type(args.cache_type_k) if args.cache_type_k else None
        type_v = cache_type(args.cache_type_v) if args.cache_type_v else None
        if split:
            model = Model(
                args.model,
                n_gpu_layers=split.offload.n_gpu_layers,
                tensor_split=list(split.offload.tensor_split),
            )
        else:
            shares = [float(s) for s in args.tensor_split.split(",")] if args.tensor_split else None
            model = Model(args.model, n_gpu_layers=args.n_gpu_layers, tensor_split=shares, devices=gpus)
    except (MeshError, ValueError) as exc:
        return _fail(str(exc), EXIT_RPC_UNUSABLE if split else 1)
    extra: dict[str, object] = {}
    if split is not None and capture is not None:
        try:
            placement = parse_placement(capture.finish())
            split.check(placement)
        except MeshError as exc:
            return _fail(str(exc), EXIT_RPC_UNUSABLE)
        described = split.describe(placement)
        print(f"mesh-llm placement: {json.dumps(described)}", file=sys.stderr, flush=True)
        extra["placement"] = lambda: described

        def lost(endpoint: str) -> None:
            _fail(f"connection to RPC worker {endpoint} closed; the split model cannot run", EXIT_RPC_LOST)
            os._exit(EXIT_RPC_LOST)  # uvicorn and llama.cpp threads would not end on their own

        watch_rpc_connections(split.endpoints, lost)

    try:
        draft = _load_draft(args.draft, model, gpus)
    except MeshError as exc:
        return _fail(str(exc), EXIT_BAD_DRAFT)
    loaded = [model, draft] if isinstance(draft, Model) else [model]
    cores = os.cpu_count() or 2
    engine_config = EngineConfig(
        n_slots=args.parallel,
        n_ctx_slot=_auto_ctx(loaded, gpus, free_before, args) if sized else args.n_ctx,
        max_queue=args.max_queue,
        # llama-cpp-python's defaults: half the cores for one-token steps, all for batches.
        n_threads=args.n_threads or max(1, cores // 2),
        n_threads_batch=args.n_threads or cores,
        draft_max=args.draft_max,
        type_k=type_k,
        type_v=type_v,
        cache_ram=args.cache_ram,
        cache_disk=args.cache_disk,
        cache_dir=args.cache_dir,
    )
    info = ServerInfo(args.alias, max_body=args.max_body, extra=extra)  # type: ignore[arg-type]
    inner = build_app(model, engine_config, info, draft)
    app = this_machine_only(inner)

    sock = socket.socket(fileno=args.fd)  # its family (Unix or TCP) is read from the descriptor
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", timeout_keep_alive=30, limit_concurrency=1000
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    # After a stop signal: finish the engine's queued work, such as prefix-cache writes to disk.
    inner.state.engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
