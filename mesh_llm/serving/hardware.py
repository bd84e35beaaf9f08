"""What this machine can offer the mesh: its chosen GPUs' memory, else a share of RAM.

Devices come from ggml's own registry (see :mod:`mesh_llm.serving.devices`), so what is counted
is exactly what llama.cpp can offload to. A CPU-only build of llama.cpp has no GPU devices to
ask about: the registry is then read only to check an explicit ``--device``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

from mesh_llm.config import CPU_RAM_FRACTION
from mesh_llm.errors import BackendError
from mesh_llm.serving.devices import (
    Device,
    describe,
    gpu_memory,
    probe_devices,
    registry_devices,
    select_devices,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capacity:
    """Memory this node advertises for model weights, and where it comes from."""

    kind: str  # "gpu" or "ram"
    device: str
    total_bytes: int  # the device's full memory
    offered_bytes: int  # what the mesh may plan with, after --max-vram and the RAM share
    ram_total_bytes: int
    ram_available_bytes: int
    devices: tuple[Device, ...] = ()  # the GPUs models are served from; empty on the CPU path

    @property
    def gpu_names(self) -> tuple[str, ...]:
        """ggml names of the chosen GPUs, in order (what the model server is told to use)."""
        return tuple(d.name for d in self.devices)


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp can place layers on a GPU (a CUDA/Metal/Vulkan build)."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # a missing or broken build offers no GPU
        return False


def capacity_from_devices(
    devices: Sequence[Device],
    spec: str | None,
    *,
    ram_total: int,
    ram_available: int,
    max_bytes: int | None = None,
    client: bool = False,
    reserved_ram: int = 0,
) -> Capacity:
    """Pure: the capacity of the devices ``--device`` picks among ``devices``.

    GPUs offer their free memory; the CPU offers a share of RAM less ``reserved_ram`` (the KV
    prefix cache's budget, which lives in RAM whatever serves). ``--max-vram`` caps either, and
    a client offers nothing. Raises ConfigError for an unknown ``--device``.
    """
    chosen = tuple(d for d in select_devices(devices, spec) if d.is_gpu) if devices else ()
    if chosen:
        free, total = gpu_memory(chosen)
        cap = Capacity("gpu", describe(chosen), total, free, ram_total, ram_available, chosen)
    else:
        share = max(0, int(ram_total * CPU_RAM_FRACTION) - reserved_ram)
        cap = Capacity("ram", "cpu", ram_total, share, ram_total, ram_available)
    offered = cap.offered_bytes if max_bytes is None else min(cap.offered_bytes, max_bytes)
    if client:
        offered = 0
    return Capacity(cap.kind, cap.device, cap.total_bytes, offered, ram_total, ram_available, cap.devices)


def detect_capacity(
    max_bytes: int | None = None,
    *,
    client: bool = False,
    device: str | None = None,
    list_devices: Callable[[], list[Device]] | None = None,
    reserved_ram: int = 0,
) -> Capacity:
    """Measure this machine. Clients offer nothing; --max-vram caps what others may offer.

    ``list_devices`` replaces the registry read (tests); by default a GPU build is probed in a
    child process and a CPU build is read only when ``device`` names one to check.
    """
    vm = psutil.virtual_memory()
    if client:
        devices: list[Device] = []
    elif list_devices is not None:
        devices = list_devices()
    elif gpu_offload_supported():
        try:
            devices = probe_devices()
        except BackendError as exc:  # a broken driver must not keep the node from serving on its CPU
            log.warning("%s; offering the CPU instead", exc)
            devices = []
    elif device is not None:
        devices = registry_devices()  # no GPU driver in a CPU build: cheap to read in-process
    else:
        devices = []
    return capacity_from_devices(
        devices,
        device,
        ram_total=vm.total,
        ram_available=vm.available,
        max_bytes=max_bytes,
        client=client,
        reserved_ram=reserved_ram,
    )
