"""Where a split model's layers go: pure placement for llama.cpp's RPC backend.

A layer split such as ``(10, 12, 8)`` -- host first, then one count per RPC device -- becomes
llama.cpp's ``n_gpu_layers`` and ``tensor_split`` (:func:`offload_settings`).
:func:`llama_placement` replays llama.cpp's own assignment rule so the mapping is tested
without loading a model, :func:`parse_placement` reads what llama.cpp actually did from its
load log, and :meth:`HostSplit.check` compares the two.

Pure: numbers and log text in, settings and verdicts out. The model server carries them out
(see ``mesh_llm.serving.rpc.host_split``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh_llm.errors import BackendError, ConfigError

__all__ = [
    "HostSplit",
    "OffloadSettings",
    "Placement",
    "RpcDevice",
    "layer_split_from_ranges",
    "llama_placement",
    "offload_settings",
    "parse_endpoint",
    "parse_placement",
    "shard_ranges",
]


def shard_ranges(layer_split: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` layer ranges for counts given host first, then each device."""
    ranges, start = [], 0
    for count in layer_split:
        ranges.append((start, start + count))
        start += count
    return ranges


def layer_split_from_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    """Counts from contiguous ``[start, end)`` ranges (e.g. a planner ``Split``'s shards, in order).

    Raises ConfigError unless the ranges start at 0 and each begins where the previous ended.
    """
    counts, expected = [], 0
    for start, end in ranges:
        if start != expected or end <= start:
            raise ConfigError(
                f"layer ranges must be contiguous from 0; got [{start}, {end}) after {expected}"
            )
        counts.append(end - start)
        expected = end
    return tuple(counts)


@dataclass(frozen=True)
class OffloadSettings:
    """What llama.cpp must be given so that each device holds exactly its planned layers.

    Devices are the host's GPUs, if it uses them, then the RPC devices in plan order, passed
    explicitly as ``llama_model_params.devices`` (not llama.cpp's default enumeration, which
    would also pull in any local GPU).
    """

    n_gpu_layers: int
    tensor_split: tuple[float, ...]
    output_on_host: bool
    """Keep the output head (``output_norm``, ``output``) on the host although llama.cpp counts it
    as the last offloaded layer; applied as a tensor buffer-type override."""


def offload_settings(layer_split: Sequence[int], *, output_on_host: bool = True) -> OffloadSettings:
    """Translate a host-first layer split into llama.cpp's offload parameters.

    llama.cpp (``llama_model_base::load_tensors``) numbers the repeating layers ``0..N-1`` and the
    output head as layer ``N``. The CPU keeps layers below ``i0 = N + 1 - n_gpu_layers``; layer
    ``il >= i0`` goes to the first device ``j`` whose cumulative normalised share exceeds
    ``(il - i0) / n_gpu_layers``. So with ``n_gpu_layers = N - host + 1`` the host's CPU keeps
    exactly its layers, and giving each device its layer count as its share -- the last one
    plus one for the output head -- makes every boundary land on a whole layer. The division is
    done in float32 on both sides of the comparison from the same small integers, so boundaries
    are exact, not rounded.
    """
    counts = [int(c) for c in layer_split]
    if len(counts) < 2:
        raise ConfigError("a layer split needs the host and at least one RPC device")
    if counts[0] < 0 or any(c < 1 for c in counts[1:]):
        raise ConfigError(f"each RPC device needs at least one layer, the host zero or more: {counts}")
    offloaded = sum(counts[1:])
    shares = [float(c) for c in counts[1:]]
    shares[-1] += 1.0  # the output head, which llama.cpp places after the last repeating layer
    return OffloadSettings(
        n_gpu_layers=offloaded + 1, tensor_split=tuple(shares), output_on_host=output_on_host
    )


def llama_placement(n_layers: int, n_gpu_layers: int, tensor_split: Sequence[float]) -> tuple[int, ...]:
    """Replay llama.cpp's layer-to-device rule: device index per layer, ``-1`` for the host CPU.

    The result has ``n_layers + 1`` entries; the last one is the output head. Mirrors
    ``get_layer_buft_list`` in llama-model.cpp, in float32 like the C++ code.
    """
    import numpy as np

    f32 = np.float32
    n_devices = len(tensor_split)
    splits, total = [], f32(0.0)
    for share in tensor_split:
        total = f32(total + f32(share))
        splits.append(total)
    splits = [f32(s / total) for s in splits]
    i_gpu_start = max(n_layers + 1 - n_gpu_layers, 0)
    act = min(n_gpu_layers, n_layers + 1) if n_devices else 0
    out = []
    for il in range(n_layers + 1):
        if il < i_gpu_start or il - i_gpu_start >= act:
            out.append(-1)
            continue
        x = f32(f32(il - i_gpu_start) / f32(act))
        j = next((k for k, s in enumerate(splits) if s > x), n_devices)  # std::upper_bound
        out.append(j)
    return tuple(out)


@dataclass(frozen=True)
class Placement:
    """Where llama.cpp put each layer, read from its load log (ground truth, not a prediction)."""

    layer_devices: tuple[str, ...]
    """Device name per repeating layer (``"CPU"``, ``"RPC0"``, ...), index = layer."""
    output_device: str
    """Where the output head's weights live (after any buffer-type override)."""
    buffer_bytes: dict[str, int] = field(default_factory=dict)
    """Model weight buffer sizes by buffer name as llama.cpp reports them (MiB precision)."""

    def ranges(self) -> list[tuple[str, int, int]]:
        """``(device, start, end)`` for each maximal run of layers on one device, in order."""
        runs: list[tuple[str, int, int]] = []
        for il, dev in enumerate(self.layer_devices):
            if runs and runs[-1][0] == dev:
                runs[-1] = (dev, runs[-1][1], il + 1)
            else:
                runs.append((dev, il, il + 1))
        return runs

    def as_dict(self) -> dict[str, Any]:
        return {
            "ranges": [{"device": d, "start": s, "end": e} for d, s, e in self.ranges()],
            "output": self.output_device,
            "buffer_bytes": dict(self.buffer_bytes),
        }


_LAYER_LINE = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_OVERRIDE_LINE = re.compile(
    r"tensor (output\.weight|token_embd\.weight) \(.*\) buffer type overridden to (\S+)"
)
_BUFFER_LINE = re.compile(r"(\S+) model buffer size =\s+([\d.]+) MiB")


def parse_placement(log_text: str, n_layers: int | None = None) -> Placement:
    """Read llama.cpp's debug load log (``layer N assigned to device X`` lines) into a Placement.

    llama.cpp logs one line per repeating layer and one for the output head (index
    ``n_layers``); without ``n_layers`` the highest index logged is taken as the head. Raises
    BackendError when a layer is missing, e.g. because the log was not captured.
    """
    devices: dict[int, str] = {}
    output_override: str | None = None
    buffers: dict[str, int] = {}
    for line in log_text.splitlines():
        if m := _LAYER_LINE.search(line):
            devices[int(m.group(1))] = m.group(2)
        elif m := _OVERRIDE_LINE.search(line):
            output_override = "CPU" if m.group(2).startswith("CPU") else m.group(2)
        elif m := _BUFFER_LINE.search(line):
            buffers[m.group(1)] = int(float(m.group(2)) * 1024 * 1024)
    if n_layers is None:
        n_layers = max(devices, default=0)
    missing = [il for il in range(n_layers + 1) if il not in devices]
    if not devices or missing:
        raise BackendError(f"llama.cpp's load log does not say where layers {missing[:5]} went")
    layer_devices = tuple(devices[il] for il in range(n_layers))
    return Placement(layer_devices, output_override or devices[n_layers], buffers)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"127.0.0.1:50052"`` -> ``("127.0.0.1", 50052)``; ConfigError when malformed."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"an RPC endpoint is HOST:PORT, not {endpoint!r}")
    return host, int(port)


@dataclass(frozen=True)
class RpcDevice:
    """One remote device as llama.cpp sees it on the host."""

    endpoint: str
    name: str  # ggml's device name, "RPC0", "RPC1", ... in the order devices were added
    handle: int  # ggml_backend_dev_t


@dataclass(frozen=True)
class HostSplit:
    """A host's side of a split, ready for llama-cpp-python: devices attached, settings computed."""

    endpoints: tuple[str, ...]
    layer_split: tuple[int, ...]
    offload: OffloadSettings
    devices: tuple[RpcDevice, ...]
    host_devices: tuple[str, ...] = ("CPU",)
    """Where the host's own layers go: its CPU, or the ggml names of its GPUs (``"CUDA0"``),
    listed ahead of the RPC devices. The output head, kept on the host, goes on the first."""
    host_counts: tuple[int, ...] = ()
    """The host's layers per device in ``host_devices`` (empty: all of them on the first)."""

    @property
    def n_layers(self) -> int:
        return sum(self.layer_split)

    def expected_devices(self) -> tuple[str, ...]:
        """Device name per layer that the plan asks for (``host_devices`` for the host's own layers)."""
        host = self.host_counts or (self.layer_split[0],)
        names = [*self.host_devices[: len(host)], *(d.name for d in self.devices)]
        out: list[str] = []
        for name, count in zip(names, (*host, *self.layer_split[1:]), strict=True):
            out += [name] * count
        return tuple(out)

    def check(self, placement: Placement) -> None:
        """Raise BackendError unless llama.cpp placed every layer (and the head) as planned."""
        want = self.expected_devices()
        if len(placement.layer_devices) != len(want):
            raise BackendError(
                f"the layer split covers {len(want)} layers; the model has {len(placement.layer_devices)}"
            )
        if placement.layer_devices != want:
            wrong = [i for i, (a, b) in enumerate(zip(placement.layer_devices, want, strict=True)) if a != b]
            raise BackendError(
                f"llama.cpp placed layers {wrong[:5]} on {[placement.layer_devices[i] for i in wrong[:5]]}, "
                f"the plan says {[want[i] for i in wrong[:5]]}"
            )
        want_output = self.host_devices[0] if self.offload.output_on_host else self.devices[-1].name
        if placement.output_device != want_output:
            raise BackendError(
                f"llama.cpp put the output head on {placement.output_device}, not {want_output}"
            )

    def describe(self, placement: Placement) -> dict[str, Any]:
        """The placement with endpoints, for logs and the model server's /mesh/placement."""
        endpoint = {d.name: d.endpoint for d in self.devices}
        out = placement.as_dict()
        for r in out["ranges"]:
            r["endpoint"] = endpoint.get(r["device"])
        return out
