"""What this machine can offer the mesh: GPU memory if a GPU is usable, else a share of RAM."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import psutil

from mesh_llm.config import CPU_RAM_FRACTION


@dataclass(frozen=True)
class Capacity:
    """Memory this node advertises for model weights, and where it comes from."""

    kind: str  # "gpu" or "ram"
    device: str
    total_bytes: int  # the device's full memory
    offered_bytes: int  # what the mesh may plan with, after --max-vram and the RAM share
    ram_total_bytes: int
    ram_available_bytes: int


def _nvidia_total() -> tuple[str, int] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names, total = [], 0
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        if mib.strip().isdigit():
            names.append(name.strip())
            total += int(mib.strip()) * 1024 * 1024
    return (", ".join(names), total) if total else None


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp can place layers on a GPU (a CUDA/Metal/Vulkan build)."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # a missing or broken build offers no GPU
        return False


def detect_capacity(max_bytes: int | None = None, *, client: bool = False) -> Capacity:
    """Measure this machine. Clients offer nothing; --max-vram caps what others may offer."""
    vm = psutil.virtual_memory()
    gpu = _nvidia_total() if gpu_offload_supported() else None
    if gpu is not None:
        kind, device, total = "gpu", gpu[0], gpu[1]
        offered = total
    else:
        kind, device, total = "ram", "cpu", vm.total
        offered = int(vm.total * CPU_RAM_FRACTION)
    if max_bytes is not None:
        offered = min(offered, max_bytes)
    if client:
        offered = 0
    return Capacity(kind, device, total, offered, vm.total, vm.available)
