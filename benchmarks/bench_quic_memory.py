"""The QUIC engines alone, in memory, no sockets: CPU per tunneled round trip, side by side.

Two connections of one engine (as the transport builds them, see transport/_compat.py) move
datagrams to each other in a loop: a 9.6 KB request one way, a 2.3 KB reply back, as one
decoded token of a split model. Reports CPU milliseconds per round trip for each engine.

    .venv/bin/python -m benchmarks.bench_quic_memory [--trips 300] [--datagram 1452]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.transport._compat import ENGINES, QuicEngine, load_engine
from mesh_llm.transport._listener import destination_cid

A, B = ("10.0.0.1", 4433), ("10.0.0.2", 4433)


def _pair(engine: QuicEngine, size: int) -> tuple[Any, Any]:
    credentials = engine.server_credentials(*NodeIdentity.generate().tls_certificate())
    client = engine.client_connection(datagram_size=size, idle_timeout=30.0)
    client.connect(B, now=1.0)
    server: Any = None
    now = 1.0
    for _ in range(100):
        for data, _ in client.datagrams_to_send(now=now):
            if server is None:
                cid = destination_cid(data, 8)
                assert cid is not None
                server = engine.server_connection(
                    credentials, datagram_size=size, idle_timeout=30.0, original_dcid=cid[0]
                )
            server.receive_datagram(data, A, now=now)
        if server is not None:
            try:
                out = server.datagrams_to_send(now=now)
            except engine.stream_errors:
                out = []
            for data, _ in out:
                client.receive_datagram(data, B, now=now)
        now += 0.001
    while client.next_event() is not None:
        pass
    while server.next_event() is not None:
        pass
    return client, server


def _pump(a: Any, b: Any, now: float) -> None:
    moved = True
    while moved:
        moved = False
        for data, _ in a.datagrams_to_send(now=now):
            b.receive_datagram(data, A, now=now)
            moved = True
        for data, _ in b.datagrams_to_send(now=now):
            a.receive_datagram(data, B, now=now)
            moved = True


def _received(quic: Any) -> int:
    n = 0
    while (event := quic.next_event()) is not None:
        if type(event).__name__ == "StreamDataReceived":
            n += len(event.data)
    return n


def cpu_per_round_trip(engine: QuicEngine, trips: int, size: int) -> float:
    client, server = _pair(engine, size)
    stream = client.get_next_available_stream_id()
    request, reply = b"x" * 9600, b"y" * 2300
    now = 2.0
    t0 = time.process_time()
    for _ in range(trips):
        for quic, peer, data in ((client, server, request), (server, client, reply)):
            quic.send_stream_data(stream, data)
            got = 0
            while got < len(data):
                _pump(client, server, now)
                got += _received(peer)
                now += 0.0001
    return (time.process_time() - t0) / trips


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trips", type=int, default=300)
    ap.add_argument("--datagram", type=int, default=1452)
    args = ap.parse_args()
    print(
        f"9.6 KB request / 2.3 KB reply, {args.datagram}-byte datagrams, {args.trips} round trips, in memory"
    )
    results = {name: cpu_per_round_trip(load_engine(name), args.trips, args.datagram) for name in ENGINES}
    for name, seconds in results.items():
        print(f"{load_engine(name)!s:<16}{seconds * 1000:8.3f} ms of CPU per round trip")
    print(f"aioquic / qh3: {results['aioquic'] / results['qh3']:.1f}x")


if __name__ == "__main__":
    main()
