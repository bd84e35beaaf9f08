"""Helpers for benchmarks/gpu_check.sh: make a model, measure a device, compare the results.

``python -m benchmarks.gpu_check model PATH``                 write a ~1 GB random-weight llama GGUF
``python -m benchmarks.gpu_check solo PATH DEVICE N OUT.json``  load on DEVICE (or CPU) through the
    engine's llama.cpp layer; record layers per device, prefill and decode tok/s, greedy tokens
``python -m benchmarks.gpu_check llama PATH DEVICE N``        the same decode in llama-cpp-python's Llama
``python -m benchmarks.gpu_check streams PATH DEVICE K N``    K sequences decoded together: aggregate tok/s
``python -m benchmarks.gpu_check compare GPU.json CPU.json``  agreement and speed-up, one line each

Agreement on a random-weight model: its logits are near-tied, so one rounding difference between
CUDA and CPU kernels may flip a greedy token and everything after it. The measure is therefore
teacher-forced: both devices read the same prompt and the argmax at every prompt position is
compared (top-1 agreement); the first 16 greedy tokens are reported beside it, for information.
The parsing and arithmetic are pure and unit-tested; the rest needs llama.cpp (and a GPU).
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
GREEDY_SHOWN = 16
N_PROMPT = 256


def offloaded_layers(log_text: str) -> tuple[int, int] | None:
    """``(offloaded, total)`` from llama.cpp's ``load_tensors: offloaded N/M layers to GPU`` line."""
    found = _OFFLOADED.findall(log_text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def all_offloaded(log_text: str) -> bool:
    """Whether the load log says every layer (output head included) went to the GPU."""
    got = offloaded_layers(log_text)
    return got is not None and got[0] == got[1] and got[1] > 0


def layers_on(log_text: str, device: str) -> tuple[int, int]:
    """``(on device, all)`` layers from the debug load log, the output head counted as one."""
    from mesh_llm.planning.placement import parse_placement

    placement = parse_placement(log_text)
    devices = [*placement.layer_devices, placement.output_device]
    return sum(d == device for d in devices), len(devices)


def prompt_tokens(n_vocab: int, n: int, seed: int = 0) -> list[int]:
    """A fixed prompt of ``n`` ordinary token ids (the first three are llama's control tokens)."""
    rng = random.Random(seed)
    return [rng.randrange(3, n_vocab) for _ in range(n)]


def top1_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """The share of positions where two argmax sequences agree (0.0 for none compared)."""
    n = min(len(a), len(b))
    return sum(x == y for x, y in zip(a[:n], b[:n], strict=True)) / n if n else 0.0


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where two token sequences differ (a length difference counts), else None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def tok_per_s(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def speedup_line(gpu: float, cpu: float, what: str = "decode") -> str:
    """One summary line the check prints."""
    ratio = f"{gpu / cpu:.1f}x" if cpu > 0 else "n/a"
    return f"{what}: GPU {gpu:.1f} tok/s, CPU {cpu:.1f} tok/s ({ratio})"


def agreement_line(gpu: dict, cpu: dict) -> str:
    top1 = top1_agreement(gpu["top1"], cpu["top1"])
    diverge = first_divergence(gpu["greedy"], cpu["greedy"])
    greedy = "equal" if diverge is None else f"differ from token {diverge}"
    return (
        f"agreement: top-1 {top1:.3f} over {min(len(gpu['top1']), len(cpu['top1']))} prompt positions; "
        f"first {GREEDY_SHOWN} greedy tokens {greedy}"
    )


def _measure(path: Path, device: str, n_decode: int) -> dict:
    from mesh_llm.planning.offload import ALL_LAYERS
    from mesh_llm.serving.engine._llama import Batch, Context, Model
    from mesh_llm.serving.rpc.host_split import LlamaLogCapture

    capture = LlamaLogCapture()
    on_gpu = device.upper() != "CPU"
    model = Model(path, n_gpu_layers=ALL_LAYERS if on_gpu else 0, devices=[device] if on_gpu else ())
    log_text = capture.finish()
    on, total = layers_on(log_text, device if on_gpu else "CPU")
    prompt = prompt_tokens(model.n_vocab, N_PROMPT)
    ctx = Context(
        model, n_seq=1, n_ctx_seq=N_PROMPT + n_decode + 16, n_batch=N_PROMPT, n_threads=8, n_threads_batch=16
    )
    batch = Batch(N_PROMPT)

    def prefill() -> float:
        ctx.clear_seq(0)
        batch.clear()
        for pos, tok in enumerate(prompt):
            batch.add(tok, pos, 0, logits=True)
        start = time.perf_counter()
        ctx.decode(batch)
        return time.perf_counter() - start

    prefill()  # the first pass allocates buffers (and on a GPU, its graphs): not timed
    prefill_s = prefill()
    top1 = [int(ctx.logits(i).argmax()) for i in range(N_PROMPT)]
    greedy: list[int] = []
    token = top1[-1]
    start = time.perf_counter()
    for pos in range(N_PROMPT, N_PROMPT + n_decode):
        greedy.append(token)
        batch.clear()
        batch.add(token, pos, 0, logits=True)
        ctx.decode(batch)
        token = int(ctx.logits(0).argmax())
    decode_s = time.perf_counter() - start
    ctx.close()
    model.close()
    return {
        "device": device,
        "layers_on_device": on,
        "layers": total,
        "offloaded": offloaded_layers(log_text),
        "prefill_tok_s": tok_per_s(N_PROMPT, prefill_s),
        "decode_tok_s": tok_per_s(n_decode, decode_s),
        "top1": top1,
        "greedy": greedy[:GREEDY_SHOWN],
    }


def _llama_decode(path: Path, device: str, n_decode: int) -> float:
    """llama-cpp-python's own ``Llama`` on the same GGUF and prompt: greedy decode tok/s."""
    from llama_cpp import Llama

    on_gpu = device.upper() != "CPU"
    llm = Llama(
        str(path),
        n_gpu_layers=-1 if on_gpu else 0,
        n_ctx=N_PROMPT + n_decode + 16,
        n_batch=N_PROMPT,
        n_threads=8,
        n_threads_batch=16,
        verbose=False,
    )
    prompt = prompt_tokens(llm.n_vocab(), N_PROMPT)
    start = 0.0
    for i, _ in enumerate(llm.generate(prompt, temp=0.0, top_k=1)):
        if i == 0:
            start = time.perf_counter()  # the prompt is behind us: decode from here
        elif i == n_decode:
            break
    return tok_per_s(n_decode, time.perf_counter() - start)


def _streams(path: Path, device: str, k: int, n_decode: int) -> float:
    """``k`` sequences decoded in one batch per step, as the engine's slots are: aggregate tok/s."""
    from mesh_llm.planning.offload import ALL_LAYERS
    from mesh_llm.serving.engine._llama import Batch, Context, Model

    on_gpu = device.upper() != "CPU"
    model = Model(path, n_gpu_layers=ALL_LAYERS if on_gpu else 0, devices=[device] if on_gpu else ())
    ctx = Context(model, n_seq=k, n_ctx_seq=n_decode + 32, n_batch=64, n_threads=8, n_threads_batch=16)
    batch = Batch(64)
    tokens = prompt_tokens(model.n_vocab, k, seed=1)
    batch.clear()
    for seq, tok in enumerate(tokens):
        batch.add(tok, 0, seq, logits=True)
    ctx.decode(batch)
    start = time.perf_counter()
    for pos in range(1, n_decode + 1):
        tokens = [int(ctx.logits(seq).argmax()) for seq in range(k)]
        batch.clear()
        for seq, tok in enumerate(tokens):
            batch.add(tok, pos, seq, logits=True)
        ctx.decode(batch)
    speed = tok_per_s(k * n_decode, time.perf_counter() - start)
    ctx.close()
    model.close()
    return speed


def main(argv: list[str]) -> int:
    if argv[:1] == ["model"]:
        from tests.gguf_fixtures import write_wide_llama_gguf

        out = write_wide_llama_gguf(Path(argv[1]), n_layers=9, n_embd=2048)
        print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB)")
        return 0
    if argv[:1] == ["solo"] and len(argv) == 5:
        got = _measure(Path(argv[1]), argv[2], int(argv[3]))
        Path(argv[4]).write_text(json.dumps(got))
        print(f"{argv[2]}: {got['layers_on_device']}/{got['layers']} layers (output head included) there")
        print(f"{argv[2]}: prefill {got['prefill_tok_s']:.1f} tok/s, decode {got['decode_tok_s']:.1f} tok/s")
        if got["layers_on_device"] != got["layers"]:
            print(f"FAIL: not every layer is on {argv[2]}", file=sys.stderr)
            return 1
        return 0
    if argv[:1] == ["llama"] and len(argv) == 4:
        print(
            f"llama-cpp-python Llama on {argv[2]}: decode {_llama_decode(Path(argv[1]), argv[2], int(argv[3])):.1f} tok/s"
        )
        return 0
    if argv[:1] == ["streams"] and len(argv) == 5:
        k = int(argv[3])
        speed = _streams(Path(argv[1]), argv[2], k, int(argv[4]))
        print(f"{k} streams on {argv[2]}: {speed:.1f} tok/s together ({speed / k:.1f} each)")
        return 0
    if argv[:1] == ["compare"] and len(argv) == 3:
        gpu, cpu = (json.loads(Path(p).read_text()) for p in argv[1:3])
        print(agreement_line(gpu, cpu))
        print(speedup_line(gpu["prefill_tok_s"], cpu["prefill_tok_s"], "prefill"))
        print(speedup_line(gpu["decode_tok_s"], cpu["decode_tok_s"]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
