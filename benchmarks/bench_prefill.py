"""Cold prefill: mesh-llm's engine against llama-cpp-python's own `Llama`, in one run.

Both load the demo model in this process, with the same threads, batch and micro-batch sizes
and flash-attention setting (the engine's, printed first). A prompt of N distinct tokens is
prefilled cold (nothing cached) and its first token sampled; tokens/s = N / that time. Rounds
alternate between the two, and the median is printed with the ratio (ours / theirs) per length.

    .venv/bin/python -m benchmarks.bench_prefill [--lengths 1024,4096,8000] [--rounds 2]
        [--chunk 256] [--flash]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from benchmarks.common import median
from mesh_llm.serving.engine import Engine, EngineConfig, Model
from mesh_llm.serving.engine._jobs import Event, Finished, Job
from mesh_llm.serving.engine._llama import SamplerSpec
from tests.harness import smollm2_path


def _prompt(model: Model, n: int, salt: int) -> list[int]:
    """``n`` tokens of text that no earlier round shares a prefix with."""
    words = " ".join(f"item{salt}-{k} weighs {k * 7 % 97} grams;" for k in range(n))
    return model.tokenize(f"Inventory {salt}: {words}", add_special=True, parse_special=False)[:n]


def _ours(engine: Engine, prompt: list[int]) -> float:
    done = threading.Event()

    def emit(event: Event) -> None:
        if isinstance(event, Finished):
            done.set()

    started = time.perf_counter()
    engine.submit(Job(prompt=prompt, max_tokens=1, sampling=SamplerSpec(temperature=0), emit=emit))
    done.wait()
    return len(prompt) / (time.perf_counter() - started)


def _theirs(llm: object, prompt: list[int]) -> float:
    llm.reset()  # type: ignore[attr-defined]
    started = time.perf_counter()
    llm.eval(prompt)  # type: ignore[attr-defined]
    llm.sample(temp=0.0)  # type: ignore[attr-defined]
    return len(prompt) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", default="1024,4096,8000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--chunk", type=int, default=EngineConfig().prefill_chunk, help="engine prefill chunk"
    )
    parser.add_argument("--flash", action="store_true", help="flash attention on, in both")
    args = parser.parse_args()
    from llama_cpp import Llama

    lengths = [int(n) for n in args.lengths.split(",")]
    cores = os.cpu_count() or 2
    config = EngineConfig(
        n_ctx_slot=max(lengths) + 64, prefill_chunk=args.chunk, n_threads=max(1, cores // 2),
        n_threads_batch=cores, flash_attn=args.flash,
    )  # fmt: skip
    n_batch = config.batch_size(drafting=False)
    print(
        f"threads {config.n_threads}/{config.n_threads_batch}, n_batch = n_ubatch = {n_batch}, "
        f"flash attention {'on' if args.flash else 'off'}, {config.n_slots} engine slots"
    )
    model = Model(smollm2_path())
    engine = Engine(model, config)
    engine.start()
    llm = Llama(
        str(smollm2_path()), n_ctx=max(lengths) + 64, n_batch=n_batch, n_ubatch=n_batch,
        n_threads=config.n_threads, n_threads_batch=config.n_threads_batch, flash_attn=args.flash,
        verbose=False,
    )  # fmt: skip
    salt = 0
    print(f"{'tokens':>7} {'ours tok/s':>11} {'Llama tok/s':>12} {'ratio':>6}")
    for n in lengths:
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.rounds):
            salt += 1
            ours.append(_ours(engine, _prompt(model, n, salt)))
            theirs.append(_theirs(llm, _prompt(model, n, salt)))
        a, b = median(ours), median(theirs)
        print(f"{n:>7} {a:>11.0f} {b:>12.0f} {a / b:>6.2f}", flush=True)
    engine.stop()


if __name__ == "__main__":
    main()
