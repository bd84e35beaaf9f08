"""Request/response latency through the mesh's TCP tunnel vs a direct connection and a plain relay.

The traffic copies one decoded token of a llama.cpp RPC split (see BENCHMARKS.md, "Split
inference"): the host writes ~9.6 KB as three RPC commands, each sent the way ggml-rpc sends
it (a 1-byte command, an 8-byte size, the payload: three send() calls with TCP_NODELAY), then
waits for a 2.3 KB reply (8-byte size, payload). The client times many such round trips over

    (a) direct     client -> echo server
    (b) relay      client -> asyncio TCP relay -> echo server
    (c) mesh       client -> open_tcp_tunnel (node A) -> QUIC over UDP -> serve_tcp_streams
                   (node B) -> echo server

Every hop runs in its own process, as in production (host node and worker node are separate
processes). Paths take turns in each round (the order alternates), and the report gives the
median round trip of each path per round, the median over rounds, and the spread.

    .venv/bin/python -m benchmarks.bench_tunnel [--rounds 7] [--trips 300] [--bulk-mb 32]
    .venv/bin/python -m benchmarks.bench_tunnel --datagram 1452     # packetize as towards another host
    .venv/bin/python -m benchmarks.bench_tunnel --profile /tmp/prof  # cProfile both mesh nodes
    sudo .venv/bin/python -m benchmarks.bench_tunnel --netns  # across two network namespaces

Every QUIC engine in --quic (default: qh3 and aioquic) gets its own mesh path, side by side.
With --netns the worker side (echo server, node B) runs in one network namespace and the host
side (client, relay, node A) in another, joined by a veth pair with a 1500-byte MTU
(benchmarks/netns.py): a real non-loopback path, where the mesh picks its datagram size from
the route's MTU as it would towards another machine on the LAN.

Each round also times moving --bulk-mb megabytes one way through each path (like a split
host loading a worker's weights).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

# One decode step of SmolLM2 split 15/15, head on the host: set_tensor (the hidden state),
# graph_compute (the serialized graph), get_tensor (asks for the worker's output).
REQUEST_COMMANDS = (2_400, 7_000, 200)
REPLY_BYTES = 2_304
REQUEST_BYTES = sum(1 + 8 + n for n in REQUEST_COMMANDS)
REPLY_TOTAL = 8 + REPLY_BYTES
KIND = "bench"


# --- the hops (each runs in a child process) --------------------------------------------------


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _recv_exactly(sock: socket.socket, n: int) -> None:
    while n > 0:
        chunk = sock.recv(min(n, 1 << 16))
        if not chunk:
            raise ConnectionError("peer closed")
        n -= len(chunk)


def _serve_echo(sock: socket.socket) -> None:
    size, reply = (REPLY_BYTES).to_bytes(8, "little"), bytes(REPLY_BYTES)
    with sock:
        _nodelay(sock)
        with contextlib.suppress(ConnectionError, OSError):
            mode = sock.recv(1)
            while mode == b"R":  # request/response
                _recv_exactly(sock, REQUEST_BYTES)
                sock.sendall(size)
                sock.sendall(reply)
            while mode == b"B":  # bulk: an 8-byte length, that many bytes, then an 8-byte ack
                length = int.from_bytes(_recv_all(sock, 8), "little")
                _recv_exactly(sock, length)
                sock.sendall(length.to_bytes(8, "little"))


def _recv_all(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def run_echo(bind: str) -> None:
    """A blocking server like ggml-rpc's: one thread per connection, one reply per request."""
    listener = socket.create_server((bind, 0))
    _announce({"port": listener.getsockname()[1]})
    threading.Thread(target=_wait_for_stdin_close, args=(listener.close,), daemon=True).start()
    with contextlib.suppress(OSError):
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_serve_echo, args=(conn,), daemon=True).start()


async def _relay_pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(64 * 1024):
            writer.write(chunk)
            await writer.drain()
    writer.close()


async def run_relay(peer_host: str, target: int) -> None:
    """A plain asyncio TCP relay: the cost of one Python hop with no QUIC in it."""

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(peer_host, target)
        await asyncio.gather(_relay_pump(reader, up_writer), _relay_pump(up_reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    _announce({"port": server.sockets[0].getsockname()[1]})
    await _stdin_closed()


async def run_mesh_worker(target: int, datagram_size: int, engine: str, bind: str) -> None:
    """Node B: a transport serving tunnel streams to the echo server."""
    from mesh_llm.mesh.tunnel import serve_tcp_streams

    transport = await _start_transport(datagram_size, engine, bind)
    serve_tcp_streams(transport, KIND, lambda peer, header: target)
    _announce({"port": transport.port, "node_id": transport.node_id})
    await _stdin_closed()
    await transport.close()


async def run_mesh_host(
    worker_host: str, worker_port: int, worker_id: str, datagram_size: int, engine: str
) -> None:
    """Node A: a transport that dials node B and opens a TCP tunnel to it."""
    from mesh_llm.mesh.tunnel import open_tcp_tunnel

    transport = await _start_transport(datagram_size, engine, "0.0.0.0")
    link = await transport.dial([f"{worker_host}:{worker_port}"], worker_id)
    tunnel = await open_tcp_tunnel(link, KIND)
    _announce({"port": tunnel.port})
    await _stdin_closed()
    await tunnel.close()
    await transport.close()


async def _start_transport(datagram_size: int, engine: str, bind: str) -> Any:
    from mesh_llm.peer.identity import NodeIdentity
    from mesh_llm.peer.token import MeshCredentials
    from mesh_llm.transport import MeshTransport, TransportConfig

    # The parent hands both nodes the same (throwaway) mesh credentials on stdin.
    secrets = json.loads(sys.stdin.readline())
    credentials = MeshCredentials(bytes.fromhex(secrets["mesh_id"]), bytes.fromhex(secrets["secret"]))
    config = TransportConfig(quic_engine=engine)
    if datagram_size:  # e.g. 1452: packetize as towards a peer on another host
        config = TransportConfig(
            quic_engine=engine, max_datagram_size=datagram_size, same_host_datagram_size=datagram_size
        )
    transport = MeshTransport(NodeIdentity.generate(), credentials, host=bind, config=config)
    await transport.start()
    return transport


def _announce(info: dict[str, Any]) -> None:
    print(json.dumps(info), flush=True)


def _wait_for_stdin_close(then: Any) -> None:
    sys.stdin.read()
    then()


async def _stdin_closed() -> None:
    await asyncio.to_thread(sys.stdin.read)


def run_role(args: argparse.Namespace) -> None:
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        if args.role == "echo":
            run_echo(args.bind)
        elif args.role == "relay":
            asyncio.run(run_relay(args.peer_host, args.target))
        elif args.role == "mesh-worker":
            asyncio.run(run_mesh_worker(args.target, args.datagram, args.quic, args.bind))
        elif args.role == "mesh-host":
            asyncio.run(run_mesh_host(args.peer_host, args.target, args.node_id, args.datagram, args.quic))
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)


# --- the client (the parent process) ----------------------------------------------------------


class Hop:
    """A child process running one role; it prints one JSON line when ready, exits on stdin EOF."""

    def __init__(
        self, role: str, *extra: str, stdin: str = "", profile: str = "", prefix: list[str] | None = None
    ) -> None:
        cmd = [*(prefix or []), sys.executable, "-m", "benchmarks.bench_tunnel", "--role", role, *extra]
        if profile:
            cmd += ["--profile", profile]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if stdin:
            self.proc.stdin.write(stdin)
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{role} did not start")
        self.info: dict[str, Any] = json.loads(line)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def hops(
    profile_dir: str, datagram_size: int, engines: list[str], in_netns: bool
) -> Iterator[dict[str, tuple[str, int]]]:
    """Start every hop; yield the address each path's client connects to.

    In a namespace pair, the echo server and node B run in the worker's namespace and are
    reached at its address; everything else runs here, in the host's namespace.
    """
    from benchmarks.netns import Pair
    from mesh_llm.peer.token import new_mesh

    pair = Pair()
    far = pair.prefix(pair.worker_ns) if in_netns else []
    worker_ip = pair.worker_ip if in_netns else "127.0.0.1"
    bind = "0.0.0.0" if in_netns else "127.0.0.1"
    mesh = new_mesh()
    secrets = json.dumps({"mesh_id": mesh.mesh_id.hex(), "secret": mesh.secret.hex()}) + "\n"
    started: list[Hop] = []
    try:
        echo = Hop("echo", "--bind", bind, prefix=far)
        started.append(echo)
        target = str(echo.info["port"])
        started.append(relay := Hop("relay", "--target", target, "--peer-host", worker_ip))
        ports = {
            "direct": (worker_ip, int(echo.info["port"])),
            "relay": ("127.0.0.1", int(relay.info["port"])),
        }
        size = ["--datagram", str(datagram_size)]
        for engine in engines:

            def prof(name: str, engine: str = engine) -> str:
                return os.path.join(profile_dir, f"{name}-{engine}.prof") if profile_dir else ""

            worker = Hop(
                "mesh-worker", "--target", target, "--quic", engine, "--bind", bind, *size,
                stdin=secrets, profile=prof("worker"), prefix=far,
            )  # fmt: skip
            started.append(worker)
            host = Hop(
                "mesh-host", "--target", str(worker.info["port"]), "--node-id", worker.info["node_id"],
                "--peer-host", worker_ip, "--quic", engine, *size, stdin=secrets, profile=prof("host"),
            )  # fmt: skip
            started.append(host)
            ports[f"mesh-{engine}"] = ("127.0.0.1", int(host.info["port"]))
        yield ports
    finally:
        for hop in reversed(started):
            hop.stop()


def round_trip(sock: socket.socket, request: list[bytes]) -> float:
    t0 = time.perf_counter()
    for part in request:
        sock.sendall(part)
    _recv_exactly(sock, REPLY_TOTAL)
    return time.perf_counter() - t0


def request_parts() -> list[bytes]:
    parts = []
    for cmd, size in enumerate(REQUEST_COMMANDS):
        parts += [bytes([cmd]), size.to_bytes(8, "little"), os.urandom(size)]
    return parts


def bulk(sock: socket.socket, megabytes: int) -> float:
    """Seconds to move `megabytes` one way (client -> echo server) and hear it arrived."""
    block = bytes(1 << 20)
    t0 = time.perf_counter()
    sock.sendall((megabytes << 20).to_bytes(8, "little"))
    for _ in range(megabytes):
        sock.sendall(block)
    _recv_exactly(sock, 8)
    return time.perf_counter() - t0


def _spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))} .. {fmt.format(max(values))}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--trips", type=int, default=300, help="round trips per path per round")
    ap.add_argument("--bulk-mb", type=int, default=32, help="MB moved one way per path per round (0: skip)")
    ap.add_argument(
        "--datagram", type=int, default=0, help="force the mesh's UDP payload size (1452: as off-host)"
    )
    ap.add_argument("--quic", default="qh3,aioquic", help="QUIC engines to measure, comma-separated")
    ap.add_argument("--netns", action="store_true", help="across two network namespaces (needs root)")
    ap.add_argument("--profile", default="", help="directory for cProfile dumps of both mesh nodes")
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--role", choices=["echo", "relay", "mesh-worker", "mesh-host"], help=argparse.SUPPRESS)
    ap.add_argument("--target", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--node-id", default="", help=argparse.SUPPRESS)
    ap.add_argument("--bind", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--peer-host", default="127.0.0.1", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        if args.role in ("mesh-worker", "mesh-host") and "," in args.quic:
            args.quic = args.quic.split(",")[0]
        run_role(args)
        return
    if args.netns:
        from benchmarks.netns import rerun_in_host_namespace

        rerun_in_host_namespace(
            "benchmarks.bench_tunnel", [*(a for a in sys.argv[1:] if a != "--netns"), "--in-netns"]
        )
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    engines = [e.strip() for e in args.quic.split(",") if e.strip()]
    request = request_parts()
    names = ("direct", "relay", *(f"mesh-{e}" for e in engines))
    rtt: dict[str, list[float]] = {name: [] for name in names}
    mbps: dict[str, list[float]] = {name: [] for name in names}
    with hops(args.profile, args.datagram, engines, args.in_netns) as addresses:
        socks = {name: socket.create_connection(addresses[name]) for name in names}
        bulks = {name: socket.create_connection(addresses[name]) for name in names}
        try:
            for sock, mode in [(s, b"R") for s in socks.values()] + [(s, b"B") for s in bulks.values()]:
                _nodelay(sock)
                sock.sendall(mode)
            for name in names:
                for _ in range(50):  # warm up: connections, tunnel stream, congestion window
                    round_trip(socks[name], request)
                if args.bulk_mb:
                    bulk(bulks[name], 4)
            for i in range(args.rounds):
                for name in names if i % 2 == 0 else reversed(names):
                    trips = [round_trip(socks[name], request) for _ in range(args.trips)]
                    rtt[name].append(statistics.median(trips))
                    if args.bulk_mb:
                        mbps[name].append(args.bulk_mb * 1.048576 / bulk(bulks[name], args.bulk_mb))
        finally:
            for sock in [*socks.values(), *bulks.values()]:
                sock.close()
            time.sleep(0.2)  # let the tunnels see both EOFs before their processes stop

    where = "two network namespaces over a veth pair (MTU 1500)" if args.in_netns else "loopback"
    print(f"{REQUEST_BYTES} B request in {3 * len(REQUEST_COMMANDS)} sends, {REPLY_TOTAL} B reply; "
          f"{args.rounds} rounds x {args.trips} round trips per path; {where}; mesh datagrams: "
          f"{args.datagram or 'chosen per path'}")  # fmt: skip
    print("median over rounds of each round's median round trip [min .. max over rounds]")
    for name in names:
        line = f"{name:<13}{_spread([v * 1000 for v in rtt[name]], '{:.3f}')} ms"
        if mbps[name]:
            line += f"   bulk {_spread(mbps[name], '{:.0f}')} MB/s"
        print(line)
    med = {name: statistics.median(v) for name, v in rtt.items()}
    for name in names[1:]:
        ratios = [d / x for d, x in zip(rtt["direct"], rtt[name], strict=True)]
        print(f"direct/{name}: {_spread(ratios, '{:.1%}')}; "
              f"added {(med[name] - med['direct']) * 1000:+.3f} ms per round trip")  # fmt: skip


if __name__ == "__main__":
    main()
