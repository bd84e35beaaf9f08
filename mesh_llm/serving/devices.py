"""This machine's compute devices, as ggml's own device registry lists them.

Pure part: :class:`Device` records and :func:`select_devices`, which turns ``--device`` into the
devices a node serves from (default: every GPU; the CPU when there is none). Thin part:
:func:`registry_devices` reads ``ggml_backend_dev_count`` / ``_get`` / ``_name`` /
``_description`` / ``_type`` / ``_memory`` through ctypes, and :func:`probe_devices` does that
in a short-lived child process (``python -m mesh_llm.serving.devices``), so the long-lived node
process never opens a GPU context that would hold device memory for as long as it runs.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from mesh_llm.errors import BackendError, ConfigError


class DeviceKind(Enum):
    """``enum ggml_backend_dev_type``, in its order."""

    CPU = 0  # system memory
    GPU = 1  # dedicated memory
    IGPU = 2  # integrated GPU on host memory
    ACCEL = 3  # works next to the CPU backend (BLAS, AMX)
    META = 4  # wraps other devices for tensor parallelism


@dataclass(frozen=True)
class Device:
    """One ggml device and its memory at the moment it was listed."""

    name: str  # ggml's name: "CPU", "CUDA0", "Metal", "Vulkan0", "ROCm0", ...
    description: str  # e.g. "NVIDIA H200"
    kind: DeviceKind
    free_bytes: int
    total_bytes: int

    @property
    def is_gpu(self) -> bool:
        """A device that holds offloaded layers in its own (or unified) memory."""
        return self.kind in (DeviceKind.GPU, DeviceKind.IGPU)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.name.lower()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Device:
        return cls(
            name=str(d["name"]),
            description=str(d.get("description", "")),
            kind=DeviceKind[str(d["kind"]).upper()],
            free_bytes=int(d.get("free_bytes", 0)),
            total_bytes=int(d.get("total_bytes", 0)),
        )


def select_devices(devices: Sequence[Device], spec: str | None) -> tuple[Device, ...]:
    """The devices ``--device`` asks for, in the order given.

    ``None``/``"auto"``: every discrete GPU, else every integrated GPU, else the CPU.
    ``"cpu"``: the CPU only. Otherwise a comma-separated list of ggml device names
    (case-insensitive, e.g. ``CUDA0,CUDA1``) that must all be GPUs present here; an unknown
    name is a :class:`ConfigError` listing the devices that are present.
    """
    cpu = next((d for d in devices if d.kind is DeviceKind.CPU), None)
    cpu_only = (cpu,) if cpu is not None else ()
    if spec is None or spec.strip().lower() in ("", "auto"):
        gpus = tuple(d for d in devices if d.kind is DeviceKind.GPU)
        return gpus or tuple(d for d in devices if d.kind is DeviceKind.IGPU) or cpu_only
    by_name = {d.name.lower(): d for d in devices}
    present = ", ".join(d.name for d in devices) or "none"
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    if [w.lower() for w in wanted] == ["cpu"]:
        if cpu is None:
            raise ConfigError(f"--device CPU: ggml lists no CPU device here (devices: {present})")
        return cpu_only
    chosen: list[Device] = []
    for name in wanted:
        dev = by_name.get(name.lower())
        if dev is None:
            raise ConfigError(f"--device {spec}: no device {name!r} on this machine (devices: {present})")
        if not dev.is_gpu:
            raise ConfigError(
                f"--device {spec}: {dev.name} is a {dev.kind.name} device; give GPUs, or CPU alone"
            )
        if dev not in chosen:
            chosen.append(dev)
    if not chosen:
        raise ConfigError(f"--device needs a device name (devices: {present})")
    return tuple(chosen)


def gpu_memory(devices: Sequence[Device]) -> tuple[int, int]:
    """Free and total bytes over the GPUs among ``devices``."""
    gpus = [d for d in devices if d.is_gpu]
    return sum(d.free_bytes for d in gpus), sum(d.total_bytes for d in gpus)


def describe(devices: Sequence[Device]) -> str:
    """A short label for status views: ``CUDA0 (NVIDIA H200), CUDA1 (NVIDIA H200)``."""
    return ", ".join(f"{d.name} ({d.description})" if d.description else d.name for d in devices)


# ---------------------------------------------------------------------------------------------
# ggml bindings (ctypes)

_LIB_NAMES = ("libggml.so.0", "libggml.0.dylib", "libggml.dylib", "ggml.dll")


def _libggml_path() -> Path:
    # The .so.0 name is the one libllama links: loading it shares libllama's device registry.
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("llama-cpp-python is not installed")
    for location in spec.submodule_search_locations:
        for name in _LIB_NAMES:
            candidate = Path(location) / "lib" / name
            if candidate.exists():
                return candidate
    raise BackendError("llama-cpp-python ships no libggml shared library")


def registry_devices() -> list[Device]:
    """Every device in ggml's registry of this process, with its memory now.

    On a GPU build this initialises the GPU driver in this process; long-lived processes
    should call :func:`probe_devices` instead.
    """
    from llama_cpp import llama_cpp as C

    C.llama_backend_init()
    lib = ctypes.CDLL(str(_libggml_path()))
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.ggml_backend_dev_count.restype = sz
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_get.restype = vp
    lib.ggml_backend_dev_get.argtypes = [sz]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_name.argtypes = [vp]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [vp]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [vp]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = sz(0), sz(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = lib.ggml_backend_dev_type(dev)
        out.append(
            Device(
                name=(lib.ggml_backend_dev_name(dev) or b"?").decode(errors="replace"),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                kind=DeviceKind(kind) if kind in DeviceKind._value2member_map_ else DeviceKind.ACCEL,
                free_bytes=int(free.value),
                total_bytes=int(total.value),
            )
        )
    return out


def probe_devices(timeout: float = 60.0) -> list[Device]:
    """:func:`registry_devices`, read in a child process (see the module docstring)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mesh_llm.serving.devices", "--json"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendError(f"could not list ggml devices: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BackendError(f"could not list ggml devices: {tail[0]}")
    return parse_device_list(proc.stdout)


def parse_device_list(text: str) -> list[Device]:
    """Devices from the JSON that ``python -m mesh_llm.serving.devices --json`` prints."""
    try:
        rows = json.loads(text)
        return [Device.from_dict(r) for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"unreadable device list: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    devices = registry_devices()
    if "--json" in args:
        print(json.dumps([d.as_dict() for d in devices]))
    else:
        for d in devices:
            print(f"{d.name}\t{d.kind.name}\t{d.free_bytes}\t{d.total_bytes}\t{d.description}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


_handle_refs: list[Any] = []  # device arrays llama.cpp points into: must outlive the models


@functools.cache
def _dev_by_name() -> Any:
    """ggml's ``ggml_backend_dev_by_name``, after llama.cpp's backends are loaded (once)."""
    from llama_cpp import llama_cpp as C

    C.llama_backend_init()
    lib = ctypes.CDLL(str(_libggml_path()))
    lib.ggml_backend_dev_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
    return lib.ggml_backend_dev_by_name


def device_handle(name: str) -> int:
    """This process's ``ggml_backend_dev_t`` for a device name; BackendError if it has none."""
    dev = _dev_by_name()(name.encode())
    if not dev:
        raise BackendError(f"ggml has no device {name!r} in this process")
    return int(dev)


def device_array(names: Sequence[str]) -> Any:
    """A NULL-terminated ``ggml_backend_dev_t[]`` for ``llama_model_params.devices``.

    Raises BackendError for a name this process's registry does not know.
    """
    handles = [device_handle(name) for name in names]
    arr = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)
    _handle_refs.append(arr)
    return arr
