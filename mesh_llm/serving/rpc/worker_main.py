"""Entry point of an RPC-worker subprocess: ggml's RPC server on a loopback port.

Run as ``python -m mesh_llm.serving.rpc.worker_main --port P [--cache-dir D] [--threads N]
--parent-pid PID``. The server holds the tensors and runs the graph pieces a host sends it; it
serves one host connection at a time and never returns.

It listens on 127.0.0.1 only: the RPC protocol has no authentication, so the only way in from
another machine must be the mesh's authenticated tunnel.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from pathlib import Path

from mesh_llm.serving.process import die_with_parent

LOOPBACK = "127.0.0.1"


def _line_buffer_c_stdout() -> None:
    """ggml prints with printf; a fully buffered log file would lose its lines at a kill."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(stdout, None, 1, 0)  # _IOLBF
    except (OSError, ValueError):
        pass


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mesh-llm-rpc-worker")
    p.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    p.add_argument("--cache-dir", type=Path, default=None, help="ggml RPC weight cache (zero-transfer loads)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the CPU device")
    p.add_argument(
        "--device", default="auto", help="auto (first GPU, else CPU), cpu, gpu, or a ggml device name"
    )
    p.add_argument("--parent-pid", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not 0 < args.port < 65536:
        print(f"mesh-llm rpc worker: --port must be 1-65535, not {args.port}", file=sys.stderr)
        return 2
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    # The server blocks inside C forever, where Python signal handlers never run: let the
    # default actions end the process.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _line_buffer_c_stdout()

    from mesh_llm.serving.rpc.ggml import serve_rpc_forever

    if args.cache_dir is not None:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or os.cpu_count() or 1
    print(f"mesh-llm rpc worker: pid {os.getpid()}, {LOOPBACK}:{args.port}, {threads} threads", flush=True)
    reason = serve_rpc_forever(f"{LOOPBACK}:{args.port}", args.cache_dir, threads, args.device)
    print(f"mesh-llm rpc worker: {reason}", file=sys.stderr, flush=True)
    return 3


if __name__ == "__main__":
    raise SystemExit(main())
