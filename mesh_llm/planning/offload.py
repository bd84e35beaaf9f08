"""Where a node's own layers go on its own GPUs, and how much context fits next to them.

Pure: device names and byte counts in, llama.cpp's settings out. The model server carries
them out (``llama_model_params.devices`` / ``n_gpu_layers`` / ``tensor_split``, and the
context's ``type_k`` / ``type_v``). With no GPU chosen nothing is offloaded; the default context
per slot (:func:`auto_ctx`) follows one rule on GPUs and on the CPU.

llama.cpp's rule (replayed by :func:`mesh_llm.planning.placement.llama_placement`): with ``N``
repeating layers the output head counts as layer ``N``; the last ``n_gpu_layers`` of those
``N + 1`` go to the listed devices, divided by the cumulative normalised ``tensor_split``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mesh_llm.errors import ConfigError
from mesh_llm.planning.placement import OffloadSettings, offload_settings

ALL_LAYERS = 9999  # more than any model has: llama.cpp offloads min(n_gpu_layers, N + 1)

# ggml_type ids (ggml.h) and bytes per element of the KV cache types llama.cpp accepts.
CACHE_TYPES: dict[str, tuple[int, float]] = {
    "f32": (0, 4.0),
    "f16": (1, 2.0),
    "bf16": (30, 2.0),
    "q8_0": (8, 34 / 32),
    "q4_0": (2, 18 / 32),
    "q4_1": (3, 20 / 32),
    "q5_0": (6, 22 / 32),
    "q5_1": (7, 24 / 32),
    "iq4_nl": (20, 18 / 32),
}
DEFAULT_CACHE_TYPE = "f16"

MIN_CTX = 256
CTX_STEP = 256
MAX_AUTO_CTX = 32768  # the default context per slot never exceeds this, whatever the model was trained for
COMPUTE_RESERVE_BYTES = 512 * 1024 * 1024  # compute buffers and driver slack, per GPU set
COMPUTE_RESERVE_FRACTION = 0.05


@dataclass(frozen=True)
class GpuOffload:
    """llama.cpp's model parameters for one process's GPUs."""

    devices: tuple[str, ...]  # ggml device names, passed explicitly as llama_model_params.devices
    n_gpu_layers: int
    tensor_split: tuple[float, ...]  # one share per device in ``devices``; empty: one device

    def server_args(self) -> list[str]:
        """The model-server flags that carry this offload to the child."""
        args = ["--gpu-devices", ",".join(self.devices), "--n-gpu-layers", str(self.n_gpu_layers)]
        if self.tensor_split:
            args += ["--tensor-split", ",".join(f"{s:g}" for s in self.tensor_split)]
        return args


def memory_shares(free_bytes: Sequence[int]) -> tuple[float, ...]:
    """``tensor_split`` shares in proportion to each GPU's free memory (in MiB, so the floats
    llama.cpp normalises stay small and exact); every GPU gets a share even when nearly full."""
    if not free_bytes:
        return ()
    mib = [max(1, int(b) // (1024 * 1024)) for b in free_bytes]
    return tuple(float(m) for m in mib)


def solo_offload(gpus: Sequence[tuple[str, int]]) -> GpuOffload | None:
    """A solo model: every layer and the output head on the GPUs, divided by free memory.

    ``gpus`` holds ``(ggml name, free bytes)`` per chosen GPU; none means the CPU path (None).
    """
    if not gpus:
        return None
    names = tuple(n for n, _ in gpus)
    shares = memory_shares([f for _, f in gpus]) if len(gpus) > 1 else ()
    return GpuOffload(names, ALL_LAYERS, shares)


def draft_offload(gpus: Sequence[tuple[str, int]]) -> GpuOffload | None:
    """A draft model: all of it on the host's first GPU (small, and next to the verifier)."""
    if not gpus:
        return None
    return GpuOffload((gpus[0][0],), ALL_LAYERS, ())


def divide_layers(n_layers: int, free_bytes: Sequence[int]) -> tuple[int, ...]:
    """``n_layers`` whole layers among GPUs in proportion to their free memory (largest
    remainder, ties to the earlier GPU), so the counts always sum to ``n_layers``."""
    if not free_bytes:
        raise ConfigError("dividing layers needs at least one GPU")
    weights = [max(1, int(b)) for b in free_bytes]
    total = sum(weights)
    exact = [n_layers * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n_layers - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


@dataclass(frozen=True)
class SplitOffload:
    """A split host's settings when its own layers go on its GPUs, ahead of the RPC devices."""

    host_devices: tuple[str, ...]
    host_counts: tuple[int, ...]  # the host's layers per GPU, in ``host_devices`` order
    settings: OffloadSettings  # one ``tensor_split`` share per host GPU, then one per RPC device


def split_host_offload(
    host_gpus: Sequence[tuple[str, int]], layer_split: Sequence[int], *, output_on_host: bool = True
) -> SplitOffload:
    """A split host whose range ``[0, H)`` goes on its GPUs: devices ``[GPU..., RPC...]``.

    ``host_gpus`` holds ``(ggml name, free bytes)`` per chosen GPU; ``H`` is divided among them
    by free memory. The RPC devices' shares are :func:`offload_settings`' (the last one plus the
    output head, kept on the host's first GPU by a buffer-type override when asked); the host's
    GPUs come first with their layer counts, and everything is offloaded (``n_gpu_layers =
    N + 1``), so every boundary lands on a whole layer.
    """
    rpc = offload_settings(layer_split, output_on_host=output_on_host)  # checks the split
    host = divide_layers(int(layer_split[0]), [f for _, f in host_gpus])
    settings = OffloadSettings(
        rpc.n_gpu_layers + sum(host), (*(float(c) for c in host), *rpc.tensor_split), output_on_host
    )
    return SplitOffload(tuple(n for n, _ in host_gpus), host, settings)


def cache_type(name: str) -> int:
    """The ggml type id for a ``--cache-type-k/-v`` name; ConfigError for an unknown one."""
    try:
        return CACHE_TYPES[name.lower()][0]
    except KeyError:
        raise ConfigError(f"unknown KV cache type {name!r}; choose from {', '.join(CACHE_TYPES)}") from None


def kv_bytes_per_token(
    n_layer: int, n_head_kv: int, head_dim_k: int, head_dim_v: int, *, type_k: str, type_v: str
) -> float:
    """KV cache bytes one token takes in one sequence, over all layers."""
    k = n_head_kv * head_dim_k * CACHE_TYPES[type_k.lower()][1]
    v = n_head_kv * head_dim_v * CACHE_TYPES[type_v.lower()][1]
    return n_layer * (k + v)


def compute_bytes_per_token(n_head: int, n_ubatch: int) -> float:
    """Compute-buffer bytes one token of context adds: without flash attention llama.cpp holds
    one layer's f32 attention scores, ``n_head`` x ``n_ubatch`` per cached token."""
    return float(n_head * n_ubatch * 4)


def context_memory(free_after_bytes: int, weights_bytes: int, budget_bytes: int | None) -> int:
    """Memory the KV caches may take: what the GPUs have free once the weights are loaded, and,
    under ``--max-vram``, no more than the budget leaves after those weights."""
    if budget_bytes is None:
        return free_after_bytes
    return max(0, min(free_after_bytes, budget_bytes - weights_bytes))


def auto_ctx(
    free_bytes: int | None, bytes_per_token: float, n_slots: int, *, n_ctx_train: int, fallback: int
) -> int:
    """The default context per slot: the model's training context, capped at ``MAX_AUTO_CTX``
    tokens and by what the memory left after the weights holds for every slot.

    The same rule on GPUs and on the CPU; only how ``free_bytes`` is measured differs. A reserve
    (the larger of 512 MiB and 5 %) stays free for fixed compute buffers. The result is a multiple
    of 256 and at least 256. ``fallback`` (the configured size), within the same ceiling, is
    returned when nothing is known about the memory (``None``); no memory at all gives the floor.
    """
    ceiling = min(n_ctx_train if n_ctx_train > 0 else fallback, MAX_AUTO_CTX)
    if free_bytes is None or bytes_per_token <= 0 or n_slots <= 0:
        return max(MIN_CTX, min(fallback, ceiling))
    usable = free_bytes - max(COMPUTE_RESERVE_BYTES, int(free_bytes * COMPUTE_RESERVE_FRACTION))
    per_slot = max(0, int(usable / (bytes_per_token * n_slots))) // CTX_STEP * CTX_STEP
    return max(MIN_CTX, min(per_slot, ceiling))
