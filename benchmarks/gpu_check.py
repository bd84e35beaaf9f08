"""Helpers for benchmarks/gpu_check.sh: make a model, time decoding on a device, read the load log.

``python -m benchmarks.gpu_check model PATH``        write a ~1 GB random-weight llama GGUF
``python -m benchmarks.gpu_check solo PATH DEVICE``  load on DEVICE (or CPU), check offload, print tok/s
The parsing and arithmetic are pure and unit-tested; the rest needs llama.cpp (and a GPU).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def offloaded_layers(log_text: str) -> tuple[int, int] | None:
    """``(offloaded, total)`` from llama.cpp's ``load_tensors: offloaded N/M layers to GPU`` line."""
    found = _OFFLOADED.findall(log_text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def all_offloaded(log_text: str) -> bool:
    """Whether the load log says every layer (output head included) went to the GPU."""
    got = offloaded_layers(log_text)
    return got is not None and got[0] == got[1] and got[1] > 0


def tok_per_s(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def speedup_line(gpu: float, cpu: float) -> str:
    """The summary line the check prints."""
    ratio = f"{gpu / cpu:.1f}x" if cpu > 0 else "n/a"
    return f"decode: GPU {gpu:.1f} tok/s, CPU {cpu:.1f} tok/s ({ratio})"


def _decode_speed(path: Path, device: str, n_tokens: int) -> tuple[float, str]:
    from mesh_llm.planning.offload import ALL_LAYERS
    from mesh_llm.serving.engine._llama import Batch, Context, Model
    from mesh_llm.serving.host_split import LlamaLogCapture

    capture = LlamaLogCapture()
    on_gpu = device.upper() != "CPU"
    model = Model(path, n_gpu_layers=ALL_LAYERS if on_gpu else 0, devices=[device] if on_gpu else ())
    log_text = capture.finish()
    ctx = Context(model, n_seq=1, n_ctx_seq=n_tokens + 64, n_batch=64, n_threads=8, n_threads_batch=16)
    batch = Batch(64)
    batch.add(1, 0, 0, logits=True)
    ctx.decode(batch)
    start = time.perf_counter()
    for pos in range(1, n_tokens + 1):
        batch.clear()
        batch.add(int(ctx.logits(0).argmax()), pos, 0, logits=True)
        ctx.decode(batch)
    speed = tok_per_s(n_tokens, time.perf_counter() - start)
    ctx.close()
    model.close()
    return speed, log_text


def main(argv: list[str]) -> int:
    if argv[:1] == ["model"]:
        from tests.gguf_fixtures import write_wide_llama_gguf

        out = write_wide_llama_gguf(Path(argv[1]), n_layers=9, n_embd=2048)
        print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB)")
        return 0
    if argv[:1] == ["solo"]:
        path, device = Path(argv[1]), argv[2]
        n = int(argv[3]) if len(argv) > 3 else 128
        speed, log_text = _decode_speed(path, device, n)
        if device.upper() != "CPU":
            got = offloaded_layers(log_text)
            print(f"offload: {got[0] if got else '?'}/{got[1] if got else '?'} layers on {device}")
            if not all_offloaded(log_text):
                print("FAIL: not every layer was offloaded", file=sys.stderr)
                return 1
        print(f"{device}: {speed:.1f} tok/s")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
