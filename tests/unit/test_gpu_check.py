"""The pure parts of benchmarks/gpu_check (which itself needs an NVIDIA GPU)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.gpu_check import (
    agreement_line,
    all_offloaded,
    first_divergence,
    layers_on,
    offloaded_layers,
    prompt_tokens,
    speedup_line,
    tok_per_s,
    top1_agreement,
)
from mesh_llm.errors import BackendError

ROOT = Path(__file__).resolve().parents[2]

LOG = """load_tensors: loading model tensors, this can take a while... (mmap = true)
load_tensors: offloading 30 repeating layers to GPU
load_tensors: offloading output layer to GPU
load_tensors: offloaded 31/31 layers to GPU
load_tensors:        CUDA0 model buffer size =    98.12 MiB
"""


def _placement_log(devices: list[str]) -> str:
    # llama.cpp's debug lines, one per repeating layer and the last one for the output head.
    return "".join(
        f"load_tensors: layer {il:3d} assigned to device {dev}, is_swa = 0\n"
        for il, dev in enumerate(devices)
    )


def test_reads_the_offload_line() -> None:
    assert offloaded_layers(LOG) == (31, 31) and all_offloaded(LOG)
    partial = LOG.replace("31/31", "20/31")
    assert offloaded_layers(partial) == (20, 31) and not all_offloaded(partial)
    assert offloaded_layers("load_tensors: CPU model buffer size") is None and not all_offloaded("")


def test_counts_the_layers_on_a_device_head_included() -> None:
    assert layers_on(_placement_log(["CUDA0"] * 10), "CUDA0") == (10, 10)
    assert layers_on(_placement_log(["CPU"] * 2 + ["CUDA0"] * 8), "CUDA0") == (8, 10)
    assert layers_on(_placement_log(["CUDA0"] * 9 + ["CPU"]), "CUDA0") == (9, 10)
    with pytest.raises(BackendError):  # no debug lines captured: not a silent 0/0
        layers_on(LOG, "CUDA0")


def test_top1_agreement_is_the_share_of_equal_positions() -> None:
    assert top1_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert top1_agreement([1, 2, 3, 4], [1, 9, 3, 9]) == 0.5
    assert top1_agreement([1, 2, 3], [1, 2, 3, 4, 5]) == 1.0  # over the shorter
    assert top1_agreement([], [1]) == 0.0


def test_first_divergence() -> None:
    assert first_divergence([5, 6, 7], [5, 6, 7]) is None
    assert first_divergence([5, 6, 7], [5, 0, 7]) == 1
    assert first_divergence([5, 6], [5, 6, 7]) == 2


def test_the_prompt_is_fixed_and_free_of_control_tokens() -> None:
    a = prompt_tokens(300, 256)
    assert a == prompt_tokens(300, 256) and len(a) == 256
    assert min(a) >= 3 and max(a) < 300 and len(set(a)) > 100


def test_summary_lines() -> None:
    assert tok_per_s(100, 2.0) == 50.0 and tok_per_s(5, 0.0) == 0.0
    assert speedup_line(200.0, 20.0) == "decode: GPU 200.0 tok/s, CPU 20.0 tok/s (10.0x)"
    assert speedup_line(1.0, 0.0, "prefill").startswith("prefill:") and speedup_line(1.0, 0.0).endswith(
        "(n/a)"
    )
    gpu = {"top1": [1, 2, 3, 4], "greedy": [7, 8, 9]}
    assert agreement_line(gpu, {"top1": [1, 2, 0, 4], "greedy": [7, 8, 9]}) == (
        "agreement: top-1 0.750 over 4 prompt positions; first 16 greedy tokens equal"
    )
    assert agreement_line(gpu, {"top1": [1], "greedy": [7, 0]}).endswith("differ from token 1")


def test_gpu_check_scripts_parse() -> None:
    for script in ("gpu_check.sh", "gpu_check_prepare.sh", "gpu_check_rehearse.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], check=True)
