"""Split inference through llama.cpp's RPC backend, below the mesh: real worker processes and
real model servers on loopback, SmolLM2-135M and a generated wide model.

What crosses a (future) tunnel is measured with a counting TCP relay between the host and each
worker: bytes in each direction, which is what a QUIC tunnel would carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.config import BackendConfig
from mesh_llm.errors import BackendError, BackendUnavailable, ConfigError
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.planning.placement import (
    HostSplit,
    Placement,
    RpcDevice,
    layer_split_from_ranges,
    llama_placement,
    offload_settings,
    parse_endpoint,
    shard_ranges,
)
from mesh_llm.serving.model_server import BackendState, ModelServer
from mesh_llm.serving.rpc.cache import clear_rpc_cache, fnv1a_64, gguf_tensors, prefill_rpc_cache
from mesh_llm.serving.rpc.probe import probe_rpc_server
from mesh_llm.serving.rpc.supervisor import RpcWorker, RpcWorkerState
from tests.gguf_fixtures import write_wide_llama_gguf
from tests.harness import smollm2_path, wait_gone

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot")
MAX_TOKENS = 16
READY_TIMEOUT_S = 60.0

# ---------------------------------------------------------------------------------------------
# Helpers


class CountingRelay:
    """A TCP relay on 127.0.0.1 counting the bytes each way, like a tunnel would carry them.

    When either side closes, both are closed, as a tunnel must (a dead worker has to look dead
    to the host).
    """

    def __init__(self, target: str) -> None:
        self._target = parse_endpoint(target)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.to_worker = 0
        self.from_worker = 0
        self.round_trips = 0  # replies that followed a request: about one per RPC call that waits
        self._last_to_worker = True
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.to_worker = self.from_worker = self.round_trips = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_worker: bool) -> None:
        try:
            while data := src.recv(1 << 20):
                dst.sendall(data)
                with self._lock:
                    if to_worker:
                        self.to_worker += len(data)
                    else:
                        self.from_worker += len(data)
                        self.round_trips += self._last_to_worker
                    self._last_to_worker = to_worker
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


def _config() -> BackendConfig:
    return BackendConfig(n_ctx=512, startup_timeout_s=READY_TIMEOUT_S, restart_backoff_s=(0.5, 1.0))


@contextlib.asynccontextmanager
async def serving(
    log_dir: Path,
    model: Path,
    endpoints: Sequence[str] = (),
    layer_split: Sequence[int] = (),
    output_on_host: bool = True,
) -> AsyncIterator[ModelServer]:
    size = await asyncio.to_thread(lambda: model.stat().st_size)
    server = ModelServer(
        ResolvedModel("m", model, size), _config(), log_dir,
        rpc_endpoints=endpoints, layer_split=layer_split, output_on_host=output_on_host,
    )  # fmt: skip
    await server.start()
    try:
        assert await server.wait_ready(READY_TIMEOUT_S), f"{server.status()}\n{_read(log_dir / 'm.log')}"
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def workers(
    log_dir: Path, n: int, cache_dirs: Sequence[Path | None] = ()
) -> AsyncIterator[list[RpcWorker]]:
    started = [
        RpcWorker(0, cache_dirs[i] if cache_dirs else None, log_dir, name=f"w{i}", n_threads=1)
        for i in range(n)
    ]
    try:
        for w in started:
            await w.start()
        yield started
    finally:
        for w in started:
            await w.stop()


async def eventually(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def complete(server: ModelServer, prompts: Sequence[str] = PROMPTS) -> list[str]:
    out = []
    async with server.client(timeout=60) as client:
        for prompt in prompts:
            r = await client.post(
                "/v1/completions",
                json={"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 0},
            )
            r.raise_for_status()
            out.append(r.json()["choices"][0]["text"])
    return out


def layer_bytes(model: Path) -> tuple[list[int], dict[str, int]]:
    """Weight bytes per layer, and the bytes of each non-layer tensor."""
    per_layer: dict[int, int] = {}
    other: dict[str, int] = {}
    for t in gguf_tensors(model):
        if t.tensor.startswith("blk."):
            il = int(t.tensor.split(".")[1])
            per_layer[il] = per_layer.get(il, 0) + t.n_bytes
        else:
            other[t.tensor] = t.n_bytes
    return [per_layer[i] for i in range(len(per_layer))], other


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_path()


@pytest.fixture(scope="module")
def smollm2_bytes(smollm2: Path) -> tuple[list[int], dict[str, int]]:
    return layer_bytes(smollm2)


@pytest.fixture(scope="module")
def solo_outputs(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    async def run() -> list[str]:
        async with serving(tmp_path_factory.mktemp("solo"), smollm2) as server:
            return await complete(server)

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------
# Placement arithmetic (pure)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.integers(0, 40))
def test_offload_settings_put_every_layer_on_its_planned_device(workers_layers: list[int], host: int) -> None:
    split = [host, *workers_layers]
    s = offload_settings(split)
    n_layers = sum(split)
    placed = llama_placement(n_layers, s.n_gpu_layers, s.tensor_split)
    want = [-1] * host + [j for j, c in enumerate(workers_layers) for _ in range(c)]
    assert list(placed[:n_layers]) == want
    assert placed[n_layers] == len(workers_layers) - 1  # the head counts as the last device's layer


def test_fnv1a_64_matches_the_reference_vectors() -> None:
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(np.frombuffer(b"foobar", dtype=np.uint8)) == 0x85944171F73967E8


def test_layer_ranges_round_trip_and_bad_splits_are_refused() -> None:
    assert shard_ranges([10, 12, 8]) == [(0, 10), (10, 22), (22, 30)]
    assert layer_split_from_ranges([(0, 10), (10, 22), (22, 30)]) == (10, 12, 8)
    with pytest.raises(ConfigError):
        layer_split_from_ranges([(0, 10), (11, 30)])
    with pytest.raises(ConfigError):
        offload_settings([30])
    with pytest.raises(ConfigError):
        offload_settings([10, 0, 20])


# ---------------------------------------------------------------------------------------------
# Split inference


async def test_split_over_one_and_two_workers_matches_solo_with_layers_where_planned(
    smollm2: Path, smollm2_bytes: tuple[list[int], dict[str, int]], solo_outputs: list[str], tmp_path: Path
) -> None:
    per_layer, _ = smollm2_bytes
    async with workers(tmp_path, 2) as (w0, w1):
        async with serving(tmp_path / "one", smollm2, [w0.endpoint], [15, 15]) as server:
            assert await complete(server) == solo_outputs
            placement = await server.placement()
            assert placement is not None
            assert [(r["device"], r["start"], r["end"]) for r in placement["ranges"]] == [
                ("CPU", 0, 15),
                ("RPC0", 15, 30),
            ]
        relays = [CountingRelay(w0.endpoint), CountingRelay(w1.endpoint)]
        try:
            split = [10, 12, 8]
            async with serving(tmp_path / "two", smollm2, [r.endpoint for r in relays], split) as server:
                loaded = [r.to_worker for r in relays]
                placement = await server.placement()
                assert placement is not None
                assert [(r["device"], r["start"], r["end"], r["endpoint"]) for r in placement["ranges"]] == [
                    ("CPU", 0, 10, None),
                    ("RPC0", 10, 22, relays[0].endpoint),
                    ("RPC1", 22, 30, relays[1].endpoint),
                ]
                assert placement["output"] == "CPU"
                assert await complete(server) == solo_outputs
        finally:
            for r in relays:
                r.close()
    # Each worker received its own layers' weights and nothing else of size: the embeddings
    # and the output head stayed on the host.
    for (start, end), got in zip(shard_ranges(split)[1:], loaded, strict=True):
        want = sum(per_layer[start:end])
        assert want <= got < want + 512 * 1024, (start, end, want, got)


async def test_worker_listens_on_loopback_only(tmp_path: Path) -> None:
    async with workers(tmp_path, 1) as (w,):
        assert w.pid is not None
        listening = [
            c for c in psutil.Process(w.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
        ]
        assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", w.port)]
        others = [
            a.address
            for addrs in psutil.net_if_addrs().values()
            for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")
        ]
        for address in others:
            with pytest.raises(OSError), socket.create_connection((address, w.port), timeout=2):
                pass


async def test_killed_worker_fails_the_host_fast_and_stop_leaves_no_process(
    smollm2: Path, tmp_path: Path
) -> None:
    async with workers(tmp_path, 1) as (w,):
        async with serving(tmp_path, smollm2, [w.endpoint], [20, 10]) as server:
            pids = [w.pid, server.pid]
            assert None not in pids
            children = [c.pid for p in pids for c in psutil.Process(p).children(recursive=True)]
            os.kill(w.pid, signal.SIGKILL)  # type: ignore[arg-type]
            await eventually(lambda: not server.ready, 5)
            status = server.status()
            assert status.state is BackendState.RESTARTING, status
            assert w.endpoint in status.message, status.message
            assert w.state is RpcWorkerState.FAILED
            # Its restart cannot reach the worker either: it exits with a reason, it does not hang.
            await eventually(lambda: "not reachable" in server.status().message, 10)
            assert "not reachable" in server.status().message, server.status()
            with pytest.raises(httpx.HTTPError):
                async with server.client(timeout=5) as client:
                    await client.get("/mesh/health")
    assert wait_gone([p for p in pids + children if p is not None]) == []


def test_worker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    parent = (
        "import asyncio, pathlib, sys, time\n"
        "from mesh_llm.serving.rpc.supervisor import RpcWorker\n"
        "w = RpcWorker(0, None, pathlib.Path(sys.argv[1]), n_threads=1)\n"
        "asyncio.run(w.start())\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        worker_pid = int(proc.stdout.readline())
        assert psutil.pid_exists(worker_pid)
    finally:
        proc.kill()  # like a node killed with -9: no chance to stop its children
        proc.wait(10)
    assert wait_gone([worker_pid]) == []


def test_host_split_check_refuses_a_placement_that_differs_from_the_plan() -> None:
    devices = (RpcDevice("127.0.0.1:1", "RPC0", 1), RpcDevice("127.0.0.1:2", "RPC1", 2))
    split = HostSplit(("127.0.0.1:1", "127.0.0.1:2"), (1, 2, 1), offload_settings([1, 2, 1]), devices)
    split.check(Placement(("CPU", "RPC0", "RPC0", "RPC1"), "CPU"))
    with pytest.raises(BackendError, match="layers \\[2\\]"):
        split.check(Placement(("CPU", "RPC0", "RPC1", "RPC1"), "CPU"))
    with pytest.raises(BackendError, match="output head"):
        split.check(Placement(("CPU", "RPC0", "RPC0", "RPC1"), "RPC1"))
    with pytest.raises(BackendError, match="the model has 5"):
        split.check(Placement(("CPU", "RPC0", "RPC0", "RPC1", "RPC1"), "CPU"))


async def test_probe_gives_up_on_a_silent_listener() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="did not answer"):
            probe_rpc_server(endpoint, timeout=0.5)
        assert time.monotonic() - started < 2


# ---------------------------------------------------------------------------------------------
# Zero-transfer loading


async def test_prefilled_cache_spares_the_hashed_tensor_with_identical_output(
    smollm2: Path, smollm2_bytes: tuple[list[int], dict[str, int]], solo_outputs: list[str], tmp_path: Path
) -> None:
    """SmolLM2's only tensor over 10 MiB is token_embd (30 MB), which a worker holds as the
    tied output head when the head sits on the last worker; its layers are all below the
    threshold and always travel."""
    _, other = smollm2_bytes
    split, worker_range = [18, 12], (18, 30)
    written, prefilled = tmp_path / "written", tmp_path / "prefilled"
    async with workers(tmp_path, 2, [written, prefilled]) as (plain, warm):
        # Without a prefill, the server saves what it was sent; its names are llama.cpp's own.
        relay = CountingRelay(plain.endpoint)
        async with serving(
            tmp_path / "cold", smollm2, [relay.endpoint], split, output_on_host=False
        ) as server:
            cold_bytes = relay.to_worker
            assert await complete(server) == solo_outputs
        relay.close()
        paths = prefill_rpc_cache(smollm2, worker_range, prefilled, include_output=True)
        assert [p.name for p in paths] == sorted(p.name for p in written.iterdir())
        relay = CountingRelay(warm.endpoint)
        async with serving(
            tmp_path / "warm", smollm2, [relay.endpoint], split, output_on_host=False
        ) as server:
            warm_bytes = relay.to_worker
            assert await complete(server) == solo_outputs
        relay.close()
    saved = cold_bytes - warm_bytes
    assert other["token_embd.weight"] <= saved < other["token_embd.weight"] + 64 * 1024, (
        cold_bytes,
        warm_bytes,
    )
    assert clear_rpc_cache(prefilled) == other["token_embd.weight"]
    assert list(prefilled.iterdir()) == []


async def test_prefill_moves_under_one_percent_of_a_wide_models_share(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from gguf import GGUFReader

    model = write_wide_llama_gguf(tmp_path_factory.mktemp("wide") / "wide.gguf")
    reference = [(t.name, int(t.data_offset), int(t.n_bytes)) for t in GGUFReader(str(model), "r").tensors]
    assert [(t.tensor, t.offset, t.n_bytes) for t in gguf_tensors(model)] == reference
    per_layer, _ = layer_bytes(model)
    cache = tmp_path / "cache"
    paths = prefill_rpc_cache(model, (1, 2), cache)
    assert len(paths) == 7
    async with workers(tmp_path, 1, [cache]) as (w,):
        relay = CountingRelay(w.endpoint)
        async with serving(tmp_path / "split", model, [relay.endpoint], [1, 1]) as server:
            moved = relay.to_worker
            split_out = await complete(server, PROMPTS[:1])
        relay.close()
    async with serving(tmp_path / "solo", model) as server:
        assert await complete(server, PROMPTS[:1]) == split_out
    assert moved < 0.01 * per_layer[1], (moved, per_layer[1])
    clear_rpc_cache(cache, paths)
