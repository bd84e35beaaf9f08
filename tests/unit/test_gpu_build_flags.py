"""bundle/gpu.sh picks llama.cpp's GPU backend from the toolchains on PATH (faked here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_SH = ROOT / "bundle" / "gpu.sh"


def _fake(bin_dir: Path, name: str, output: str = "", code: int = 0) -> None:
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit {code}\n")
    script.chmod(0o755)


def _run(bin_dir: Path, func: str, *, env: dict[str, str] | None = None, dev_dir: Path | None = None) -> str:
    # Only the fakes, plus the few coreutils the functions use, are on PATH.
    tools = bin_dir.parent / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("uname", "grep", "cat"):
        link = tools / tool
        if not link.exists():
            link.symlink_to(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip())
    full_env = {"PATH": f"{bin_dir}:{tools}", "MESH_LLM_DEV_DIR": str(dev_dir or bin_dir / "nodev")}
    full_env.update(env or {})
    proc = subprocess.run(
        ["/bin/bash", "-c", f". {GPU_SH}; {func}"], capture_output=True, text=True, env=full_env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    return d


def test_no_toolchain_builds_for_the_cpu(bin_dir: Path) -> None:
    assert _run(bin_dir, "gpu_backend") == "cpu"


def test_nvcc_without_a_gpu_builds_for_the_cpu(bin_dir: Path) -> None:
    # This CI machine: CUDA 13's nvcc, no GPU. It must never spend CI time on a CUDA build.
    _fake(bin_dir, "nvcc", "nvcc: NVIDIA (R) Cuda compiler driver")
    assert _run(bin_dir, "gpu_backend") == "cpu"
    _fake(bin_dir, "nvidia-smi", "No devices were found", code=6)
    assert _run(bin_dir, "gpu_backend") == "cpu"


def test_nvcc_with_a_listed_gpu_builds_for_cuda(bin_dir: Path) -> None:
    _fake(bin_dir, "nvcc")
    _fake(bin_dir, "nvidia-smi", "GPU 0: NVIDIA H200 (UUID: GPU-1234)")
    assert _run(bin_dir, "gpu_backend") == "cuda"
    assert "-DGGML_CUDA=on" in _run(bin_dir, "gpu_cmake_args cuda")
    assert "CMAKE_CUDA_ARCHITECTURES=90" in _run(
        bin_dir, "gpu_cmake_args cuda", env={"CUDA_ARCHITECTURES": "90"}
    )


def test_nvcc_with_a_device_node_builds_for_cuda(bin_dir: Path, tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidia0").touch()
    _fake(bin_dir, "nvcc")
    assert _run(bin_dir, "gpu_backend", dev_dir=dev) == "cuda"


def test_hipcc_with_an_amd_gpu_builds_for_rocm(bin_dir: Path) -> None:
    _fake(bin_dir, "hipcc")
    assert _run(bin_dir, "gpu_backend") == "cpu"
    _fake(bin_dir, "rocminfo", "  Name:                    gfx1100")
    assert _run(bin_dir, "gpu_backend") == "rocm"
    assert _run(bin_dir, "gpu_cmake_args rocm") == "-DGGML_HIP=on"


def test_vulkan_needs_glslc_vulkaninfo_and_headers(bin_dir: Path, tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    _fake(bin_dir, "glslc")
    _fake(bin_dir, "vulkaninfo", "GPU0: AMD Radeon")
    assert _run(bin_dir, "gpu_backend", env={"VULKAN_SDK": str(sdk)}) == "cpu"  # no headers
    (sdk / "include" / "vulkan").mkdir(parents=True)
    (sdk / "include" / "vulkan" / "vulkan.h").touch()
    assert _run(bin_dir, "gpu_backend", env={"VULKAN_SDK": str(sdk)}) == "vulkan"
    assert _run(bin_dir, "gpu_cmake_args vulkan") == "-DGGML_VULKAN=on"


def test_mesh_llm_gpu_overrides_detection(bin_dir: Path) -> None:
    _fake(bin_dir, "nvcc")
    _fake(bin_dir, "nvidia-smi", "GPU 0: NVIDIA H200")
    assert _run(bin_dir, "gpu_backend", env={"MESH_LLM_GPU": "cpu"}) == "cpu"
    assert _run(bin_dir, "gpu_backend", env={"MESH_LLM_GPU": "vulkan"}) == "vulkan"
    proc = subprocess.run(
        ["/bin/bash", "-c", f". {GPU_SH}; gpu_backend"],
        capture_output=True, text=True, env={"PATH": os.environ["PATH"], "MESH_LLM_GPU": "tpu"}, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "cpu, cuda, metal, vulkan or rocm" in proc.stderr


def test_this_machine_builds_for_the_cpu() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MESH_LLM_GPU"}
    out = subprocess.run(
        ["/bin/bash", "-c", f". {GPU_SH}; gpu_backend"], capture_output=True, text=True, env=env
    )
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has an NVIDIA GPU")
    assert out.stdout.strip() == "cpu"


def test_each_backend_has_a_library_to_verify(bin_dir: Path) -> None:
    for backend, lib in [("cpu", "libggml-cpu*"), ("cuda", "libggml-cuda*"), ("rocm", "libggml-hip*")]:
        assert _run(bin_dir, f"gpu_lib_glob {backend}") == lib


def test_setup_scripts_parse() -> None:
    for script in ("bundle/setup.sh", "bundle/gpu.sh", "bundle/make-bundle.sh"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
