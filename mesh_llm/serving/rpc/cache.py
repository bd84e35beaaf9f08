"""The RPC weight cache (zero-transfer loading): GGUF header, FNV-1a hashes, cache files.

:func:`prefill_rpc_cache` writes, on the worker, the files ``<cache_dir>/<fnv1a-64 hex>`` that
the RPC server answers ``SET_TENSOR_HASH`` from, so the host sends a hash instead of the
tensor. :func:`clear_rpc_cache` removes them.

Facts from ggml-rpc.cpp (protocol 7.0.0, vendored by llama-cpp-python 0.3.36):

* only tensors in *weight* buffers whose size is strictly greater than 10 MiB go through the
  hash path; smaller ones are always sent;
* the hash is 64-bit FNV-1a over exactly the bytes handed to ``set_tensor``: for weights that
  is the tensor's bytes as stored in the GGUF, sent in one piece;
* the cache file name is the hash as 16 lower-case hex digits; the server takes the file's
  length as the tensor size, so a half-written file would silently corrupt weights -- the
  prefill writes each file under a temporary name and renames it;
* a server whose cache directory is set also *writes* a cache file for every hashed tensor it
  had to receive (the client asks it to), so a worker with a cache directory and no prefill
  fills its disk with its share of the model. Give a worker a cache directory only when it
  prefills.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_llm.errors import GGUFError

__all__ = [
    "HASH_THRESHOLD_BYTES",
    "CacheEntry",
    "cache_entries",
    "clear_rpc_cache",
    "fnv1a_64",
    "gguf_header",
    "gguf_tensors",
    "prefill_rpc_cache",
]

HASH_THRESHOLD_BYTES = 10 * 1024 * 1024
"""ggml-rpc.cpp's HASH_THRESHOLD: weight tensors strictly larger than this are sent by hash."""


def fnv1a_64(data: Any) -> int:
    """64-bit FNV-1a of a bytes-like object (no copy for numpy arrays and memoryviews).

    Same function as ggml-rpc.cpp's ``fnv_hash``; runs in C (the ``fnv-c`` package) at about
    0.7 GB/s, the same speed the host spends hashing the tensor on its side. Calls the
    package's cffi function directly so a memory-mapped tensor is hashed in place; its public
    wrapper accepts only ``bytes``, which would copy every tensor first.
    """
    view = memoryview(data).cast("B")
    try:
        from fnv_c.ext._fnv import ffi, lib
    except ImportError:  # a future fnv-c may move its internals: fall back to the copying wrapper
        import fnv_c

        return int(fnv_c.fnv1a_64(view.tobytes()))
    return int(lib.fnv1a_64(ffi.from_buffer(view), view.nbytes))


@dataclass(frozen=True)
class CacheEntry:
    """One tensor of a GGUF file: its name, where its bytes start in the file, how many."""

    tensor: str
    offset: int  # absolute offset of the tensor's bytes in the GGUF file
    n_bytes: int


_BLOCK = re.compile(r"^blk\.(\d+)\.")
_OUTPUT_TENSORS = ("output.weight", "output_norm.weight")
_GGUF_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_tensors(gguf_path: Path) -> list[CacheEntry]:
    """Every tensor's name, absolute file offset and size, read from the GGUF header only."""
    return gguf_header(gguf_path)[1]


def gguf_header(gguf_path: Path) -> tuple[dict[str, Any], list[CacheEntry]]:
    """The GGUF's small metadata values (numbers, booleans, strings under 4 KiB, numeric arrays
    of at most 4096 items) and every tensor's name, absolute file offset and size.

    ``gguf.GGUFReader`` builds numpy views of every metadata element, which costs seconds for a
    150k-token vocabulary; this walks the header with ``struct`` and skips values it does not
    need, so a worker can plan its prefill in milliseconds.
    """
    import mmap

    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType

    try:
        with gguf_path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"GGUF" or struct.unpack_from("<I", m, 4)[0] < 2:
                raise GGUFError(f"{gguf_path} is not a GGUF v2+ file")
            n_tensors, n_kv = struct.unpack_from("<QQ", m, 8)
            pos = 24

            def string(at: int) -> tuple[str, int]:
                (n,) = struct.unpack_from("<Q", m, at)
                return bytes(m[at + 8 : at + 8 + n]).decode("utf-8", errors="replace"), at + 8 + n

            def skip(vtype: int, at: int, count: int = 1) -> int:
                if vtype in _GGUF_SCALAR:
                    return at + struct.calcsize("<" + _GGUF_SCALAR[vtype]) * count
                if vtype == _GGUF_STRING:
                    for _ in range(count):
                        at += 8 + struct.unpack_from("<Q", m, at)[0]
                    return at
                if vtype == _GGUF_ARRAY:
                    for _ in range(count):
                        etype, n = struct.unpack_from("<IQ", m, at)
                        at = skip(etype, at + 12, n)
                    return at
                raise GGUFError(f"{gguf_path}: unknown metadata value type {vtype}")

            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key, pos = string(pos)
                (vtype,) = struct.unpack_from("<I", m, pos)
                pos += 4
                if vtype in _GGUF_SCALAR:
                    (meta[key],) = struct.unpack_from("<" + _GGUF_SCALAR[vtype], m, pos)
                elif vtype == _GGUF_STRING and struct.unpack_from("<Q", m, pos)[0] < 4096:
                    meta[key] = string(pos)[0]
                elif vtype == _GGUF_ARRAY:
                    etype, n = struct.unpack_from("<IQ", m, pos)
                    if etype in _GGUF_SCALAR and n <= 4096:
                        meta[key] = list(struct.unpack_from(f"<{n}{_GGUF_SCALAR[etype]}", m, pos + 12))
                pos = skip(vtype, pos)
            alignment = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
            if not isinstance(alignment, int) or alignment <= 0:
                alignment = GGUF_DEFAULT_ALIGNMENT
            infos = []
            for _ in range(n_tensors):
                name, pos = string(pos)
                (n_dims,) = struct.unpack_from("<I", m, pos)
                dims = struct.unpack_from(f"<{n_dims}Q", m, pos + 4)
                ttype, offset = struct.unpack_from("<IQ", m, pos + 4 + 8 * n_dims)
                pos += 4 + 8 * n_dims + 12
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                infos.append((name, offset, math.prod(dims) // block * type_size))
    except (OSError, ValueError, struct.error, KeyError) as exc:
        raise GGUFError(f"{gguf_path} is not a readable GGUF file: {exc}") from exc
    data_start = pos + (-pos % alignment)
    return meta, [CacheEntry(name, data_start + offset, n_bytes) for name, offset, n_bytes in infos]


def cache_entries(
    gguf_path: Path, layer_range: tuple[int, int], *, include_output: bool = False
) -> list[CacheEntry]:
    """The tensors of ``layer_range`` that llama.cpp will send by hash (larger than 10 MiB).

    ``include_output``: this device also holds the output head (the last device when the host
    does not keep it). A model with tied embeddings has no ``output.weight``; llama.cpp then
    loads ``token_embd.weight`` as the output weight, so that tensor is listed instead.
    """
    tensors = gguf_tensors(gguf_path)
    start, end = layer_range
    names = {t.tensor for t in tensors}
    head = _OUTPUT_TENSORS if "output.weight" in names else ("token_embd.weight", "output_norm.weight")
    out = []
    for t in tensors:
        m = _BLOCK.match(t.tensor)
        mine = (m is not None and start <= int(m.group(1)) < end) or (include_output and t.tensor in head)
        if mine and t.n_bytes > HASH_THRESHOLD_BYTES:
            out.append(t)
    return out


def prefill_rpc_cache(
    gguf_path: Path, layer_range: tuple[int, int], cache_dir: Path, *, include_output: bool = False
) -> list[Path]:
    """Write the RPC cache files for the tensors a worker will hold; return their paths.

    Run on the worker, from its own copy of the GGUF, before the host loads the model: the
    host then sends an 8-byte hash instead of each such tensor. Files already present with the
    right size are kept. Each file is written under a temporary name and renamed, because the
    server would read a partly written file as a shorter tensor.
    """
    import numpy as np

    cache_dir.mkdir(parents=True, exist_ok=True)
    entries = cache_entries(gguf_path, layer_range, include_output=include_output)
    data = np.memmap(gguf_path, dtype=np.uint8, mode="r")
    paths = []
    try:
        for e in entries:
            chunk = data[e.offset : e.offset + e.n_bytes]
            path = cache_dir / f"{fnv1a_64(chunk.data):016x}"
            if not (path.is_file() and path.stat().st_size == e.n_bytes):
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                with tmp.open("wb") as f:
                    f.write(chunk.data)
                tmp.replace(path)
            paths.append(path)
    finally:
        del data
    return paths


_CACHE_NAME = re.compile(r"^[0-9a-f]{16}$")


def clear_rpc_cache(cache_dir: Path, paths: Iterable[Path] | None = None) -> int:
    """Remove RPC cache files (the given ones, or every ``<16 hex>`` file); return bytes freed."""
    if paths is None:
        if not cache_dir.is_dir():
            return 0
        paths = [p for p in cache_dir.iterdir() if _CACHE_NAME.match(p.name)]
    freed = 0
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            size = p.stat().st_size
            p.unlink()
            freed += size
    return freed
