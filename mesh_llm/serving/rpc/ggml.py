"""ctypes bindings to the few ggml entry points split inference needs, bound lazily.

:func:`serve_rpc_forever` runs ``ggml_backend_rpc_start_server`` in a worker process;
:func:`attach_rpc_devices` opens the host's connections to workers and returns their device
handles; :func:`cpu_buffer_type` names the host CPU's buffer type for tensor overrides.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh_llm.errors import BackendError, BackendUnavailable
from mesh_llm.planning.placement import RpcDevice

log = logging.getLogger(__name__)

__all__ = ["attach_rpc_devices", "cpu_buffer_type", "serve_rpc_forever"]


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


def buffer_type(device: int) -> int:
    """A device's default buffer type (for tensor buffer-type overrides)."""
    return int(_Ggml.get().dev_buffer_type(device))


def cpu_buffer_type() -> int:
    """The host CPU device's default buffer type (for tensor buffer-type overrides)."""
    g = _Ggml.get()
    return int(g.dev_buffer_type(g.dev_by_type(_DEVICE_TYPES["cpu"])))
