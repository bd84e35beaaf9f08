"""The prefix cache's two tiers: saved KV states in RAM, and their files on disk.

RAM holds states within ``--cache-ram``; every state stored there is also written, by a
background thread, to ``<state-dir>/kv/<model-digest>/`` within ``--cache-disk``, so a restarted
model server starts warm. A file names what it was saved under (`compat`: the model file's
identity, the llama.cpp build, the context length per sequence and the KV cache types) and
carries a checksum; a file that does not match, is truncated or is corrupt is skipped, removed
and logged. Files are written to a temporary name and renamed, so a process killed mid-write
leaves nothing that would be read as an entry. Files are read on a thread of their own too, so
that a restore from disk never holds up the engine's other slots (see `fetch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_llm.serving.engine._kv_index import Entry, KvIndex
from mesh_llm.serving.prefix_digest import MAX_DIGESTS

log = logging.getLogger(__name__)

MAGIC = b"MESHKV1\n"
_SUFFIX = ".kv"
_WRITE_BACKLOG = 4  # states waiting for the disk; beyond that a write is skipped, not queued


def model_identity(path: Path) -> str:
    """The model file's identity: its name, size, modification time and first and last MiB."""
    st = path.stat()
    h = hashlib.sha256(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:32]


def llama_build() -> str:
    """The llama.cpp build loaded: llama-cpp-python's version and its shared library's file."""
    import llama_cpp
    from llama_cpp import llama_cpp as C

    lib = Path(getattr(C._lib, "_name", "") or "")
    stamp = f"{lib.stat().st_size}:{lib.stat().st_mtime_ns}" if lib.is_file() else "?"
    return f"{llama_cpp.__version__}:{stamp}"


@dataclass
class CacheFigures:
    """Counters the cache keeps for status and /metrics."""

    hits: int = 0  # requests that restored a saved state
    misses: int = 0  # requests that found neither a state nor a slot sharing their prefix
    slot_hits: int = 0  # requests that reused their slot's own cache
    restored_tokens: int = 0
    saves: int = 0
    disk_writes: int = 0
    disk_rejected: int = 0  # files skipped and removed: foreign, truncated or corrupt
    restore_s_total: float = 0.0
    restore_s_last: float = 0.0
    save_s_total: float = 0.0  # reading states out of the KV cache (on a split host, over RPC too)
    save_s_last: float = 0.0


class KvStore:
    """Saved KV states in RAM within ``ram_bytes``, written through to ``folder`` within
    ``disk_bytes`` (none: RAM only). Thread-safe; states are `bytearray`s."""

    def __init__(self, ram_bytes: int, disk_bytes: int, folder: Path | None, compat: str) -> None:
        self.compat = compat
        self.ram = KvIndex(ram_bytes)
        self.disk = KvIndex(disk_bytes if folder is not None else 0)
        self.folder = folder if disk_bytes > 0 else None
        self.figures = CacheFigures()
        self._data: dict[str, bytearray] = {}
        self._lock = threading.Lock()
        self._writes: queue.Queue[tuple[Entry, bytearray] | None] = queue.Queue(_WRITE_BACKLOG)
        self._writer: threading.Thread | None = None
        self._reads: queue.Queue[Entry | None] = queue.Queue()
        self._reading: dict[str, list[Callable[[], None]]] = {}  # key -> who waits for it
        self._reader = threading.Thread(target=self._read_loop, name="kv-reader", daemon=True)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._scan()
            self._writer = threading.Thread(target=self._write_loop, name="kv-writer", daemon=True)
            self._writer.start()
            self._reader.start()

    # ---- lookups and stores (the engine thread) --------------------------------------------

    def best(self, prompt: Sequence[int]) -> tuple[Entry | None, int]:
        """The held entry sharing the longest prefix with ``prompt`` (RAM before disk at a tie)."""
        with self._lock:
            entry, shared = self.ram.best(prompt)
            on_disk, disk_shared = self.disk.best(prompt)
        return (on_disk, disk_shared) if disk_shared > shared else (entry, shared)

    def holds(self, tokens: Sequence[int]) -> bool:
        with self._lock:
            return self.ram.covering(tokens) is not None

    def load(self, entry: Entry) -> bytearray | None:
        """The state of ``entry``, from RAM or else its file (then kept in RAM too); None if it
        is gone or its file turned out bad."""
        with self._lock:
            data = self._data.get(entry.key)
            if data is not None:
                self.ram.touch(entry.key)
                self.disk.touch(entry.key)
                return data
        data = self._read(entry)
        if data is not None:
            self.put(entry.tokens, data, write=False)
        return data

    def fetch(self, entry: Entry, ready: Callable[[], None]) -> bool:
        """True if ``entry``'s state is in RAM; else its file is read into RAM on the reader
        thread (not the caller's: a big state takes a while to read and check), ``ready`` is
        called when that is done or failed, and False is returned."""
        with self._lock:
            if entry.key in self._data or entry.key not in self.disk or not self._reader.is_alive():
                return True
            waiting = self._reading.setdefault(entry.key, [])
            waiting.append(ready)
            if len(waiting) > 1:
                return False
        self._reads.put(entry)
        return False

    def put(self, tokens: Sequence[int], data: bytearray, *, write: bool = True) -> None:
        """Keep a state in RAM (dropping what it replaces or outlasts) and queue it for the disk."""
        with self._lock:
            added = self.ram.add(tokens, len(data))
            for gone in added.dropped:
                self._data.pop(gone.key, None)
            if added.entry is None or not added.new:
                return
            self._data[added.entry.key] = data
            self.figures.saves += 1
            if not write or self.folder is None or added.entry.key in self.disk:
                return
        with contextlib.suppress(queue.Full):
            self._writes.put_nowait((added.entry, data))

    def digests(self, lengths: Sequence[int]) -> list[str]:
        with self._lock:
            found = self.ram.digests(lengths) + self.disk.digests(lengths)
        return list(dict.fromkeys(found))[:MAX_DIGESTS]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            f = self.figures
            return {
                "hits": f.hits,
                "misses": f.misses,
                "slot_hits": f.slot_hits,
                "restored_tokens": f.restored_tokens,
                "saves": f.saves,
                "ram_entries": len(self.ram),
                "ram_bytes": self.ram.total,
                "ram_budget_bytes": self.ram.budget,
                "disk_entries": len(self.disk),
                "disk_bytes": self.disk.total,
                "disk_budget_bytes": self.disk.budget,
                "disk_writes": f.disk_writes,
                "disk_rejected": f.disk_rejected,
                "restore_seconds_total": round(f.restore_s_total, 4),
                "restore_seconds_last": round(f.restore_s_last, 4),
                "save_seconds_total": round(f.save_s_total, 4),
                "save_seconds_last": round(f.save_s_last, 4),
            }

    def close(self, timeout: float = 10.0) -> None:
        """Finish the writes queued so far (and stop the reader)."""
        self._reads.put(None)
        if self._writer is not None:
            self._writes.put(None)
            self._writer.join(timeout)
            self._writer = None

    # ---- files ----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / (key + _SUFFIX)

    def _reject(self, path: Path, why: str) -> None:
        log.warning("prefix cache: removing %s: %s", path.name, why)
        self.figures.disk_rejected += 1
        with contextlib.suppress(OSError):
            path.unlink()

    def _header(self, path: Path) -> tuple[dict[str, Any], int] | None:
        """A file's header and where its state begins; None (the file rejected) if it is not ours."""
        try:
            with path.open("rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise ValueError("not a mesh-llm KV file")
                n = int.from_bytes(f.read(4), "little")
                header = json.loads(f.read(n))
            if header.get("compat") != self.compat:
                raise ValueError("saved by another model, llama.cpp build or context setting")
            start = len(MAGIC) + 4 + n
            if path.stat().st_size != start + int(header["size"]):
                raise ValueError("truncated")
            if not isinstance(header.get("tokens"), list) or path.stem != header.get("key"):
                raise ValueError("malformed header")
            return header, start
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._reject(path, str(exc) or type(exc).__name__)
            return None

    def _scan(self) -> None:
        """Index the files a previous run left, oldest first; remove what cannot be used."""
        assert self.folder is not None
        found: list[tuple[float, Path]] = []
        for path in self.folder.iterdir():
            if path.suffix != _SUFFIX:
                self._reject(path, "a leftover of an unfinished write")
                continue
            found.append((path.stat().st_mtime, path))
        for _, path in sorted(found):
            read = self._header(path)
            if read is None:
                continue
            header, _ = read
            added = self.disk.add(header["tokens"], int(header["size"]), key=header["key"])
            for gone in added.dropped:
                with contextlib.suppress(OSError):
                    self._path(gone.key).unlink()
        if self.disk.total:
            log.info("prefix cache: %d states on disk (%.1f MB)", len(self.disk), self.disk.total / 1e6)

    def _read(self, entry: Entry) -> bytearray | None:
        if self.folder is None or entry.key not in self.disk:
            return None
        path = self._path(entry.key)
        read = self._header(path)
        if read is not None:
            header, start = read
            data = bytearray(int(header["size"]))
            with path.open("rb") as f:
                f.seek(start)
                got = f.readinto(data)
            if got == len(data) and zlib.crc32(data) == header.get("crc"):
                with self._lock:
                    self.disk.touch(entry.key)
                with contextlib.suppress(OSError):
                    os.utime(path)  # the next run's LRU order
                return data
            self._reject(path, "corrupt (checksum)")
        with self._lock:
            self.disk.remove(entry.key)
        return None

    def _read_loop(self) -> None:
        while (entry := self._reads.get()) is not None:
            try:
                data = self._read(entry)
                if data is not None:
                    self.put(entry.tokens, data, write=False)
            except Exception as exc:  # the state is lost to the cache, never the thread
                log.warning("prefix cache: could not read %s: %s", entry.key, exc)
            finally:
                with self._lock:
                    waiting = self._reading.pop(entry.key, [])
                for ready in waiting:
                    try:
                        ready()
                    except Exception:
                        log.exception("prefix cache: a reader's callback failed")

    def _write_loop(self) -> None:
        while (item := self._writes.get()) is not None:
            entry, data = item
            try:
                self._write(entry, data)
            except OSError as exc:  # a full or read-only disk costs the cache, never the server
                log.warning("prefix cache: could not write %s: %s", entry.key, exc)

    def _write(self, entry: Entry, data: bytearray) -> None:
        header = json.dumps(
            {"compat": self.compat, "key": entry.key, "tokens": list(entry.tokens),
             "size": len(data), "crc": zlib.crc32(data), "saved": time.time()}
        ).encode()  # fmt: skip
        path = self._path(entry.key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as f:
            f.write(MAGIC + len(header).to_bytes(4, "little") + header)
            f.write(data)
        with self._lock:
            added = self.disk.add(entry.tokens, len(data), key=entry.key)
            if added.entry is None or not added.new:
                tmp.unlink()
                return
            os.replace(tmp, path)
            self.figures.disk_writes += 1
            for gone in added.dropped:
                with contextlib.suppress(OSError):
                    self._path(gone.key).unlink()
