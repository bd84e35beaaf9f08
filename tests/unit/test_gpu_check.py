"""The pure parts of benchmarks/gpu_check (which itself needs an NVIDIA GPU)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.gpu_check import all_offloaded, offloaded_layers, speedup_line, tok_per_s

ROOT = Path(__file__).resolve().parents[2]

LOG = """load_tensors: loading model tensors, this can take a while... (mmap = true)
load_tensors: offloading 30 repeating layers to GPU
load_tensors: offloading output layer to GPU
load_tensors: offloaded 31/31 layers to GPU
load_tensors:        CUDA0 model buffer size =    98.12 MiB
"""


def test_reads_the_offload_line() -> None:
    assert offloaded_layers(LOG) == (31, 31) and all_offloaded(LOG)
    partial = LOG.replace("31/31", "20/31")
    assert offloaded_layers(partial) == (20, 31) and not all_offloaded(partial)
    assert offloaded_layers("load_tensors: CPU model buffer size") is None and not all_offloaded("")


def test_speed_arithmetic() -> None:
    assert tok_per_s(100, 2.0) == 50.0 and tok_per_s(5, 0.0) == 0.0
    assert speedup_line(200.0, 20.0) == "decode: GPU 200.0 tok/s, CPU 20.0 tok/s (10.0x)"
    assert speedup_line(1.0, 0.0).endswith("(n/a)")


def test_gpu_check_scripts_parse() -> None:
    for script in ("benchmarks/gpu_check.sh", "benchmarks/gpu_check_prepare.sh"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
