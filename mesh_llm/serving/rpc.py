"""llama.cpp's RPC backend: worker processes, host-side devices, layer placement, weight cache.

Everything below the mesh that split inference needs. The mesh layer above decides *who* holds
which layers (the planner) and carries the bytes (QUIC tunnels); this module knows how llama.cpp
must be told, and nothing about peers.

Pieces, in the order data flows:

* **Placement** (pure): a layer split such as ``(10, 12, 8)`` -- host first, then one count per
  RPC device -- becomes llama.cpp's ``n_gpu_layers`` and ``tensor_split``
  (:func:`offload_settings`). :func:`llama_placement` replays llama.cpp's own assignment rule so
  the mapping is tested without loading a model, and :func:`parse_placement` reads what
  llama.cpp actually did from its load log.
* **ggml bindings** (ctypes, loaded lazily): :func:`serve_rpc_forever` runs
  ``ggml_backend_rpc_start_server`` in a worker process; :func:`attach_rpc_devices` opens the
  host's connections to workers and returns their device handles.
* **Probe**: :func:`probe_rpc_server` speaks the protocol's HELLO with a deadline, so nothing
  waits on a worker forever (llama.cpp's own client has no timeouts and aborts on failure).
* **Weight cache** (zero-transfer loading): :func:`prefill_rpc_cache` writes, on the worker,
  the files ``<cache_dir>/<fnv1a-64 hex>`` that the RPC server answers ``SET_TENSOR_HASH``
  from, so the host sends a hash instead of the tensor. :func:`clear_rpc_cache` removes them.
* **Supervision**: :class:`RpcWorker` starts ``python -m mesh_llm.serving.rpc_worker`` in its
  own process group, waits until it answers HELLO, reports a crash, stops it.

Facts from ggml-rpc.cpp (protocol 7.0.0, vendored by llama-cpp-python 0.3.36):

* only tensors in *weight* buffers whose size is strictly greater than 10 MiB go through the
  hash path; smaller ones are always sent;
* the hash is 64-bit FNV-1a over exactly the bytes handed to ``set_tensor``: for weights that
  is the tensor's bytes as stored in the GGUF, sent in one piece;
* the cache file name is the hash as 16 lower-case hex digits; the server takes the file's
  length as the tensor size, so a half-written file would silently corrupt weights -- the
  prefill writes each file under a temporary name and renames it;
* a server whose cache directory is set also *writes* a cache file for every hashed tensor it
  had to receive (the client asks it to), so a worker with a cache directory and no prefill
  fills its disk with its share of the model. Give a worker a cache directory only when it
  prefills.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import logging
import math
import os
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from mesh_llm.errors import BackendError, BackendUnavailable, ConfigError, GGUFError
from mesh_llm.serving.process import log_tail, stop_group

log = logging.getLogger(__name__)

__all__ = [
    "HASH_THRESHOLD_BYTES",
    "OUTPUT_TENSOR_PATTERN",
    "CacheEntry",
    "HostSplit",
    "LlamaLogCapture",
    "OffloadSettings",
    "Placement",
    "RpcDevice",
    "RpcWorker",
    "RpcWorkerState",
    "RpcWorkerStatus",
    "attach_rpc_devices",
    "cache_entries",
    "clear_rpc_cache",
    "cpu_buffer_type",
    "fnv1a_64",
    "gguf_tensors",
    "layer_split_from_ranges",
    "llama_placement",
    "offload_settings",
    "parse_endpoint",
    "parse_placement",
    "prefill_rpc_cache",
    "prepare_host_split",
    "probe_rpc_server",
    "serve_rpc_forever",
    "shard_ranges",
    "watch_rpc_connections",
]

HASH_THRESHOLD_BYTES = 10 * 1024 * 1024
"""ggml-rpc.cpp's HASH_THRESHOLD: weight tensors strictly larger than this are sent by hash."""

RPC_PROTO_MAJOR = 7  # the protocol this module's probe speaks; the server refuses other majors
_CMD_HELLO = 14  # fixed across protocol versions by a static_assert in ggml-rpc.cpp
_CONN_CAPS_SIZE = 24  # rpc_msg_hello_req: uint8_t conn_caps[24]

# ---------------------------------------------------------------------------------------------
# Placement (pure)


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

    Devices are the RPC devices in plan order, passed explicitly as ``llama_model_params.devices``
    (not llama.cpp's default enumeration, which would also pull in any local GPU).
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


# ---------------------------------------------------------------------------------------------
# ggml bindings (ctypes)


def _llama_lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("llama-cpp-python is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "lib"
        if (candidate / "libggml-rpc.so.0").exists():
            return candidate
    raise BackendError(
        "llama-cpp-python was built without RPC support (no libggml-rpc.so.0): "
        "reinstall it with CMAKE_ARGS=-DGGML_RPC=on"
    )


class _Ggml:
    """The few ggml entry points we call, bound once per process.

    Loads the ``.so.0`` files: those are the names libllama links against, so we share its
    backend registry. The plain ``.so`` names are separate copies with a separate registry.
    """

    _instance: _Ggml | None = None

    def __init__(self) -> None:
        lib_dir = _llama_lib_dir()
        ggml = ctypes.CDLL(str(lib_dir / "libggml.so.0"))
        rpc = ctypes.CDLL(str(lib_dir / "libggml-rpc.so.0"))
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        self.dev_by_type = _fn(ggml, "ggml_backend_dev_by_type", vp, ctypes.c_int)
        self.dev_by_name = _fn(ggml, "ggml_backend_dev_by_name", vp, ctypes.c_char_p)
        self.dev_name = _fn(ggml, "ggml_backend_dev_name", ctypes.c_char_p, vp)
        self.dev_description = _fn(ggml, "ggml_backend_dev_description", ctypes.c_char_p, vp)
        self.dev_buffer_type = _fn(ggml, "ggml_backend_dev_buffer_type", vp, vp)
        self.reg_dev_count = _fn(ggml, "ggml_backend_reg_dev_count", sz, vp)
        self.reg_dev_get = _fn(ggml, "ggml_backend_reg_dev_get", vp, vp, sz)
        self.rpc_add_server = _fn(rpc, "ggml_backend_rpc_add_server", vp, ctypes.c_char_p)
        self.rpc_start_server = _fn(
            rpc, "ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p, sz, sz,
            ctypes.POINTER(vp),
        )  # fmt: skip

    @classmethod
    def get(cls) -> _Ggml:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def _fn(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_DEVICE_TYPES = {"cpu": 0, "gpu": 1, "igpu": 2}


def serve_rpc_forever(endpoint: str, cache_dir: Path | None, n_threads: int, device: str = "auto") -> str:
    """Run ggml's RPC server on ``endpoint`` in this thread; returns only if it cannot serve.

    ``device``: ``"auto"`` (the first GPU, else the CPU), ``"cpu"``, ``"gpu"`` or a ggml device
    name such as ``"CUDA0"``. Returns a reason string when the server gives up (bind failure).
    """
    g = _Ggml.get()
    if device == "auto":
        dev = g.dev_by_type(_DEVICE_TYPES["gpu"]) or g.dev_by_type(_DEVICE_TYPES["cpu"])
    elif device in _DEVICE_TYPES:
        dev = g.dev_by_type(_DEVICE_TYPES[device])
    else:
        dev = g.dev_by_name(device.encode())
    if not dev:
        return f"no ggml device {device!r} on this machine"
    log.info("RPC worker device: %s (%s)", g.dev_name(dev).decode(), g.dev_description(dev).decode())
    devices = (ctypes.c_void_p * 1)(dev)
    cache = str(cache_dir).encode() if cache_dir is not None else None
    g.rpc_start_server(endpoint.encode(), cache, n_threads, 1, devices)
    return f"the RPC server could not serve {endpoint} (port in use, or bad address)"


@dataclass(frozen=True)
class RpcDevice:
    """One remote device as llama.cpp sees it on the host."""

    endpoint: str
    name: str  # ggml's device name, "RPC0", "RPC1", ... in the order devices were added
    handle: int  # ggml_backend_dev_t


def attach_rpc_devices(endpoints: Sequence[str]) -> list[RpcDevice]:
    """Connect this process's ggml to each worker and return its device, in the given order.

    The connection stays open for the life of the process (llama.cpp keeps one per endpoint).
    Probe first with :func:`probe_rpc_server`: ggml aborts the process if it cannot connect.
    Each worker serves exactly one device (see rpc_worker), so one endpoint is one device.
    """
    g = _Ggml.get()
    out = []
    for endpoint in endpoints:
        reg = g.rpc_add_server(endpoint.encode())
        if not reg or g.reg_dev_count(reg) < 1:
            raise BackendUnavailable(f"RPC worker {endpoint} offers no device")
        dev = g.reg_dev_get(reg, 0)
        out.append(RpcDevice(endpoint, g.dev_name(dev).decode(), int(dev)))
    return out


def cpu_buffer_type() -> int:
    """The host CPU device's default buffer type (for tensor buffer-type overrides)."""
    g = _Ggml.get()
    return int(g.dev_buffer_type(g.dev_by_type(_DEVICE_TYPES["cpu"])))


# ---------------------------------------------------------------------------------------------
# Host side: what the model server does before and after llama.cpp loads the model

# The output head's weights. A model with tied embeddings loads token_embd.weight a second time
# as its output weight, under the token_embd name; the input copy is on the CPU anyway.
OUTPUT_TENSOR_PATTERN = r"^(output|output_norm|token_embd)\."


class _BuftOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]  # llama_model_tensor_buft_override


@dataclass(frozen=True)
class HostSplit:
    """A host's side of a split, ready for llama-cpp-python: devices attached, settings computed."""

    endpoints: tuple[str, ...]
    layer_split: tuple[int, ...]
    offload: OffloadSettings
    devices: tuple[RpcDevice, ...]

    @property
    def n_layers(self) -> int:
        return sum(self.layer_split)

    def expected_devices(self) -> tuple[str, ...]:
        """Device name per layer that the plan asks for (``"CPU"`` for the host's own layers)."""
        names = ["CPU"] + [d.name for d in self.devices]
        out: list[str] = []
        for name, count in zip(names, self.layer_split, strict=True):
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
        want_output = "CPU" if self.offload.output_on_host else self.devices[-1].name
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


_params_hook_refs: list[Any] = []  # ctypes arrays llama.cpp points into: must outlive the model


def prepare_host_split(
    endpoints: Sequence[str],
    layer_split: Sequence[int],
    *,
    n_layers: int | None = None,
    output_on_host: bool = True,
    probe_timeout: float = 10.0,
) -> HostSplit:
    """Probe and attach the RPC workers and make the next ``llama_cpp.Llama`` use exactly them.

    ``layer_split`` is host first, then one count per endpoint, in the same order; it must
    sum to the model's layer count (checked here when ``n_layers`` is given, and always by
    :meth:`HostSplit.check` after loading). Call in the model-server process before the model
    is constructed. Installs a hook on ``llama_model_default_params`` (which ``Llama.__init__`` calls) that
    sets ``devices`` to our RPC devices in plan order and, with ``output_on_host``, a buffer-type
    override keeping the output head on the host CPU. llama-cpp-python's own ``rpc_servers``
    setting is accepted but ignored by ``Llama`` in 0.3.36, and llama.cpp's default device list
    would add any local GPU after the RPC devices; explicit devices avoid both.
    """
    counts = tuple(int(c) for c in layer_split)
    if len(counts) != len(endpoints) + 1:
        raise ConfigError(
            f"layer split {counts} needs {len(endpoints) + 1} counts: the host's, then one per RPC worker"
        )
    if n_layers is not None and sum(counts) != n_layers:
        raise ConfigError(f"layer split {counts} covers {sum(counts)} layers; the model has {n_layers}")
    offload = offload_settings(counts, output_on_host=output_on_host)
    for endpoint in endpoints:
        probe_rpc_server(endpoint, probe_timeout)
    devices = attach_rpc_devices(endpoints)

    from llama_cpp import llama_cpp as llama_c

    dev_array = (ctypes.c_void_p * (len(devices) + 1))(*[d.handle for d in devices], None)
    overrides = (_BuftOverride * 2)(
        _BuftOverride(OUTPUT_TENSOR_PATTERN.encode(), cpu_buffer_type()), _BuftOverride(None, None)
    )
    original = llama_c.llama_model_default_params

    def params_with_devices() -> Any:
        params = original()
        params.devices = ctypes.cast(dev_array, ctypes.c_void_p)
        if output_on_host:
            params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
        return params

    _params_hook_refs[:] = [dev_array, overrides, original]
    llama_c.llama_model_default_params = params_with_devices
    return HostSplit(tuple(endpoints), counts, offload, tuple(devices))


class LlamaLogCapture:
    """Record llama.cpp's log lines (debug included) while passing them to llama-cpp-python's
    own handler, which prints them or not by its verbosity. Needed to read the placement."""

    def __init__(self) -> None:
        import llama_cpp._logger as llama_logger
        from llama_cpp import llama_cpp as llama_c

        self._lines: list[str] | None = []
        forward = llama_logger.llama_log_callback

        @llama_c.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if self._lines is not None:
                self._lines.append(text.decode("utf-8", errors="replace"))
            forward(level, text, user_data)

        self._callback = callback  # ctypes callbacks must stay referenced while installed
        self._forward = forward
        llama_c.llama_log_set(callback, ctypes.c_void_p(0))

    def finish(self) -> str:
        """Stop recording, give logging back to llama-cpp-python's handler; return the text."""
        from llama_cpp import llama_cpp as llama_c

        llama_c.llama_log_set(self._forward, ctypes.c_void_p(0))
        text = "".join(self._lines or [])
        self._lines = None
        return text


def watch_rpc_connections(
    endpoints: Sequence[str], on_lost: Callable[[str], None], interval: float = 0.5
) -> threading.Thread:
    """Call ``on_lost(endpoint)`` as soon as this process's connection to a worker closes.

    llama.cpp only notices a dead worker at its next RPC call, by aborting. Watching the
    sockets (no data is read: only hang-up conditions are polled) turns a worker crash, or a
    tunnel closing its local end, into a report at once, even while idle. Call after the model
    has loaded, when the connections are the ones llama.cpp keeps (one per endpoint).
    Endpoints must be numeric ``IP:PORT``, as they are compared with the sockets' peers.
    """
    import psutil

    wanted = {parse_endpoint(e): e for e in endpoints}
    fds: dict[int, str] = {}
    for conn in psutil.Process().net_connections(kind="tcp"):
        if (
            conn.raddr
            and (conn.raddr.ip, conn.raddr.port) in wanted
            and conn.status == psutil.CONN_ESTABLISHED
        ):
            fds[conn.fd] = wanted[(conn.raddr.ip, conn.raddr.port)]
    missing = set(endpoints) - set(fds.values())

    def watch() -> None:
        if missing:
            on_lost(sorted(missing)[0])
            return
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        while True:  # the timeout only bounds each wait; hang-ups wake the poll at once
            for fd, _event in poller.poll(int(interval * 1000)):
                on_lost(fds[fd])
                return

    thread = threading.Thread(target=watch, name="rpc-connection-watch", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------
# Probe


def probe_rpc_server(endpoint: str, timeout: float = 5.0) -> tuple[int, int, int]:
    """Open a connection, exchange HELLO, close; return the server's protocol version.

    Raises BackendUnavailable when nothing answers within ``timeout`` (refused, busy with
    another client -- a worker serves one client at a time -- or silent), and BackendError when
    the server speaks another major protocol version.
    """
    host, port = parse_endpoint(endpoint)
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            reply = b""
            want = 8 + 4 + _CONN_CAPS_SIZE
            while len(reply) < want:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(want - len(reply))
                if not chunk:
                    raise BackendUnavailable(f"RPC worker {endpoint} closed the connection during HELLO")
                reply += chunk
    except TimeoutError as exc:
        raise BackendUnavailable(f"RPC worker {endpoint} did not answer HELLO within {timeout:g} s") from exc
    except OSError as exc:
        raise BackendUnavailable(f"RPC worker {endpoint} is not reachable: {exc.strerror or exc}") from exc
    (size,) = struct.unpack_from("<Q", reply)
    major, minor, patch = reply[8], reply[9], reply[10]
    if size != 4 + _CONN_CAPS_SIZE or major != RPC_PROTO_MAJOR:
        raise BackendError(
            f"RPC worker {endpoint} speaks protocol {major}.{minor}.{patch}, not {RPC_PROTO_MAJOR}.x"
        )
    return major, minor, patch


# ---------------------------------------------------------------------------------------------
# Weight cache (zero-transfer loading)


def fnv1a_64(data: Any) -> int:
    """64-bit FNV-1a of a bytes-like object (no copy for numpy arrays and memoryviews).

    Same function as ggml-rpc.cpp's ``fnv_hash``; runs in C (the ``fnv-c`` package) at about
    0.7 GB/s, the same speed the host spends hashing the tensor on its side. Calls the
    package's cffi function directly so a memory-mapped tensor is hashed in place; its public
    wrapper accepts only ``bytes``, which would copy every tensor first.
    """
    view = memoryview(data).cast("B")
    try:
        from fnv_c.ext._fnv import ffi, lib
    except ImportError:  # a future fnv-c may move its internals: fall back to the copying wrapper
        import fnv_c

        return int(fnv_c.fnv1a_64(view.tobytes()))
    return int(lib.fnv1a_64(ffi.from_buffer(view), view.nbytes))


@dataclass(frozen=True)
class CacheEntry:
    """One tensor of a GGUF file: its name, where its bytes start in the file, how many."""

    tensor: str
    offset: int  # absolute offset of the tensor's bytes in the GGUF file
    n_bytes: int


_BLOCK = re.compile(r"^blk\.(\d+)\.")
_OUTPUT_TENSORS = ("output.weight", "output_norm.weight")
_GGUF_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_tensors(gguf_path: Path) -> list[CacheEntry]:
    """Every tensor's name, absolute file offset and size, read from the GGUF header only."""
    return gguf_header(gguf_path)[1]


def gguf_header(gguf_path: Path) -> tuple[dict[str, Any], list[CacheEntry]]:
    """The GGUF's small metadata values (numbers, booleans, strings under 4 KiB, numeric arrays
    of at most 4096 items) and every tensor's name, absolute file offset and size.

    ``gguf.GGUFReader`` builds numpy views of every metadata element, which costs seconds for a
    150k-token vocabulary; this walks the header with ``struct`` and skips values it does not
    need, so a worker can plan its prefill in milliseconds.
    """
    import mmap

    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType

    try:
        with gguf_path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"GGUF" or struct.unpack_from("<I", m, 4)[0] < 2:
                raise GGUFError(f"{gguf_path} is not a GGUF v2+ file")
            n_tensors, n_kv = struct.unpack_from("<QQ", m, 8)
            pos = 24

            def string(at: int) -> tuple[str, int]:
                (n,) = struct.unpack_from("<Q", m, at)
                return bytes(m[at + 8 : at + 8 + n]).decode("utf-8", errors="replace"), at + 8 + n

            def skip(vtype: int, at: int, count: int = 1) -> int:
                if vtype in _GGUF_SCALAR:
                    return at + struct.calcsize("<" + _GGUF_SCALAR[vtype]) * count
                if vtype == _GGUF_STRING:
                    for _ in range(count):
                        at += 8 + struct.unpack_from("<Q", m, at)[0]
                    return at
                if vtype == _GGUF_ARRAY:
                    for _ in range(count):
                        etype, n = struct.unpack_from("<IQ", m, at)
                        at = skip(etype, at + 12, n)
                    return at
                raise GGUFError(f"{gguf_path}: unknown metadata value type {vtype}")

            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key, pos = string(pos)
                (vtype,) = struct.unpack_from("<I", m, pos)
                pos += 4
                if vtype in _GGUF_SCALAR:
                    (meta[key],) = struct.unpack_from("<" + _GGUF_SCALAR[vtype], m, pos)
                elif vtype == _GGUF_STRING and struct.unpack_from("<Q", m, pos)[0] < 4096:
                    meta[key] = string(pos)[0]
                elif vtype == _GGUF_ARRAY:
                    etype, n = struct.unpack_from("<IQ", m, pos)
                    if etype in _GGUF_SCALAR and n <= 4096:
                        meta[key] = list(struct.unpack_from(f"<{n}{_GGUF_SCALAR[etype]}", m, pos + 12))
                pos = skip(vtype, pos)
            alignment = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
            if not isinstance(alignment, int) or alignment <= 0:
                alignment = GGUF_DEFAULT_ALIGNMENT
            infos = []
            for _ in range(n_tensors):
                name, pos = string(pos)
                (n_dims,) = struct.unpack_from("<I", m, pos)
                dims = struct.unpack_from(f"<{n_dims}Q", m, pos + 4)
                ttype, offset = struct.unpack_from("<IQ", m, pos + 4 + 8 * n_dims)
                pos += 4 + 8 * n_dims + 12
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                infos.append((name, offset, math.prod(dims) // block * type_size))
    except (OSError, ValueError, struct.error, KeyError) as exc:
        raise GGUFError(f"{gguf_path} is not a readable GGUF file: {exc}") from exc
    data_start = pos + (-pos % alignment)
    return meta, [CacheEntry(name, data_start + offset, n_bytes) for name, offset, n_bytes in infos]


def cache_entries(
    gguf_path: Path, layer_range: tuple[int, int], *, include_output: bool = False
) -> list[CacheEntry]:
    """The tensors of ``layer_range`` that llama.cpp will send by hash (larger than 10 MiB).

    ``include_output``: this device also holds the output head (the last device when the host
    does not keep it). A model with tied embeddings has no ``output.weight``; llama.cpp then
    loads ``token_embd.weight`` as the output weight, so that tensor is listed instead.
    """
    tensors = gguf_tensors(gguf_path)
    start, end = layer_range
    names = {t.tensor for t in tensors}
    head = _OUTPUT_TENSORS if "output.weight" in names else ("token_embd.weight", "output_norm.weight")
    out = []
    for t in tensors:
        m = _BLOCK.match(t.tensor)
        mine = (m is not None and start <= int(m.group(1)) < end) or (include_output and t.tensor in head)
        if mine and t.n_bytes > HASH_THRESHOLD_BYTES:
            out.append(t)
    return out


def prefill_rpc_cache(
    gguf_path: Path, layer_range: tuple[int, int], cache_dir: Path, *, include_output: bool = False
) -> list[Path]:
    """Write the RPC cache files for the tensors a worker will hold; return their paths.

    Run on the worker, from its own copy of the GGUF, before the host loads the model: the
    host then sends an 8-byte hash instead of each such tensor. Files already present with the
    right size are kept. Each file is written under a temporary name and renamed, because the
    server would read a partly written file as a shorter tensor.
    """
    import numpy as np

    cache_dir.mkdir(parents=True, exist_ok=True)
    entries = cache_entries(gguf_path, layer_range, include_output=include_output)
    data = np.memmap(gguf_path, dtype=np.uint8, mode="r")
    paths = []
    try:
        for e in entries:
            chunk = data[e.offset : e.offset + e.n_bytes]
            path = cache_dir / f"{fnv1a_64(chunk.data):016x}"
            if not (path.is_file() and path.stat().st_size == e.n_bytes):
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                with tmp.open("wb") as f:
                    f.write(chunk.data)
                tmp.replace(path)
            paths.append(path)
    finally:
        del data
    return paths


_CACHE_NAME = re.compile(r"^[0-9a-f]{16}$")


def clear_rpc_cache(cache_dir: Path, paths: Iterable[Path] | None = None) -> int:
    """Remove RPC cache files (the given ones, or every ``<16 hex>`` file); return bytes freed."""
    if paths is None:
        if not cache_dir.is_dir():
            return 0
        paths = [p for p in cache_dir.iterdir() if _CACHE_NAME.match(p.name)]
    freed = 0
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            size = p.stat().st_size
            p.unlink()
            freed += size
    return freed


# ---------------------------------------------------------------------------------------------
# Supervision


class RpcWorkerState(Enum):
    STARTING = "starting"  # launched, not yet answering HELLO
    READY = "ready"  # answering HELLO: a host may connect
    FAILED = "failed"  # exited or never became ready; see the message
    STOPPED = "stopped"


@dataclass(frozen=True)
class RpcWorkerStatus:
    """A snapshot of one RPC worker, for status views."""

    state: RpcWorkerState
    endpoint: str
    pid: int | None
    since: float
    message: str = ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RpcWorker:
    """One ggml RPC server subprocess bound to 127.0.0.1, in its own process group.

    It does not restart by itself: a host's model state on a worker dies with the worker, so
    whoever placed the model decides what happens next (re-plan, or ``start()`` again). A crash
    sets the state to FAILED and calls ``on_change``. Liveness while serving is the process
    itself: the worker answers one client at a time, so a HELLO probe would queue behind the
    host's connection (the host side watches that connection; see watch_rpc_connections).
    """

    def __init__(
        self,
        port: int = 0,
        cache_dir: Path | None = None,
        log_dir: Path | None = None,
        *,
        name: str = "rpc-worker",
        n_threads: int | None = None,
        device: str = "auto",
        on_change: Callable[[], None] = lambda: None,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.name = name
        self._fixed_port = port
        self.port = port
        self.cache_dir = cache_dir
        self._log_path = (log_dir or Path.cwd()) / f"{name}.log"
        self._n_threads = n_threads or os.cpu_count() or 1
        self._device = device
        self._on_change = on_change
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._state = RpcWorkerState.STOPPED
        self._since = time.time()
        self._message = ""
        self._stopping = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def state(self) -> RpcWorkerState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def status(self) -> RpcWorkerStatus:
        return RpcWorkerStatus(self._state, self.endpoint, self.pid, self._since, self._message)

    def _set_state(self, state: RpcWorkerState, message: str = "") -> None:
        if state is not self._state or message != self._message:
            log.info("rpc worker %s: %s -> %s %s", self.name, self._state.value, state.value, message)
            self._state = state
            self._message = message
            self._since = time.time()
            self._on_change()

    async def start(self) -> None:
        """Launch the worker and return once it answers HELLO; BackendError if it cannot."""
        if self.pid is not None:
            return
        self._stopping = False
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3  # a port we picked may be taken in between: pick again
        for attempt in range(attempts):
            self.port = self._fixed_port or _free_port()
            self._set_state(RpcWorkerState.STARTING, f"starting on {self.endpoint}")
            self._proc = await self._spawn()
            reason = await self._wait_ready(self._proc)
            if reason is None:
                self._set_state(RpcWorkerState.READY, "")
                self._watch = asyncio.create_task(self._watch_exit(self._proc), name=f"watch-{self.name}")
                return
            await self._kill()
            if attempt == attempts - 1:
                self._set_state(RpcWorkerState.FAILED, reason)
                raise BackendUnavailable(f"RPC worker {self.name}: {reason}")

    async def stop(self) -> None:
        """Stop the worker's whole process group; idempotent."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self._kill()
        self._set_state(RpcWorkerState.STOPPED, "stopped")

    async def _spawn(self) -> asyncio.subprocess.Process:
        cmd = [
            sys.executable, "-m", "mesh_llm.serving.rpc_worker",
            "--port", str(self.port), "--threads", str(self._n_threads), "--device", self._device,
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        if self.cache_dir is not None:
            cmd += ["--cache-dir", str(self.cache_dir)]
        logf = self._log_path.open("ab")
        try:
            return await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            logf.close()

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> str | None:
        """None once the worker answers HELLO; otherwise why it never did."""
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                return f"exited with code {proc.returncode} while starting ({log_tail(self._log_path)})"
            try:
                await asyncio.to_thread(probe_rpc_server, self.endpoint, 1.0)
                return None
            except BackendUnavailable:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.05)
        return f"did not answer on {self.endpoint} within {self._startup_timeout_s:g} s"

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not self._stopping:
            self._set_state(RpcWorkerState.FAILED, f"exited with code {code} ({log_tail(self._log_path)})")

    async def _kill(self) -> None:
        await stop_group(self._proc, self._stop_timeout_s)
