"""Dialing one peer: the QUIC handshake with one address, claims on a node id, failures.

`connect_quic` is where OSError from sockets and name lookups becomes PeerUnreachable; the
helpers below turn a refused handshake into AuthenticationError or PeerUnreachable.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from mesh_llm.errors import AuthenticationError, ConfigError, PeerUnreachable, TransportError
from mesh_llm.peer.token import format_address, parse_address
from mesh_llm.transport._codes import CloseCode
from mesh_llm.transport._compat import QuicEngine
from mesh_llm.transport._config import TransportConfig
from mesh_llm.transport._connection import Connection
from mesh_llm.transport._handshake import Refusal, Step
from mesh_llm.transport._link import PeerLink
from mesh_llm.transport._links import Claim
from mesh_llm.transport._listener import Listener
from mesh_llm.transport._state import ConnectionGone, State
from mesh_llm.transport._udp import enlarge_buffers, plain_ip


@dataclass
class Dial:
    expected: str | None
    deadline: float
    claim: Claim | None = None


def dial_failure(
    targets: list[tuple[str, int]], dial: Dial, problems: list[TransportError]
) -> TransportError:
    who = f"node {dial.expected[:8]}" if dial.expected else "peer"
    where = ", ".join(format_address(h, p) for h, p in targets)
    auth = [p for p in problems if isinstance(p, AuthenticationError)]
    if auth:
        return AuthenticationError("; ".join(str(p) for p in auth))
    detail = "; ".join(str(p) for p in problems) or "no answer before the deadline"
    return PeerUnreachable(f"could not reach {who} at {where}: {detail}")


async def connect_quic(
    host: str,
    port: int,
    deadline: float,
    *,
    config: TransportConfig,
    engine: QuicEngine,
    new_connection: Callable[[Any, socket.socket], Connection],
    size_for: Callable[[str], int],
) -> Connection:
    """QUIC + TLS handshake with one address; the caller authenticates the result."""
    loop = asyncio.get_running_loop()
    deadline = min(deadline, loop.time() + config.handshake_timeout)
    shown = format_address(host, port)
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), max(deadline - loop.time(), 0)
        )
    except TimeoutError:
        raise PeerUnreachable(f"{shown}: name lookup timed out") from None
    except OSError as exc:
        raise PeerUnreachable(f"{shown}: cannot resolve ({exc.strerror or exc})") from exc
    if not infos:
        raise PeerUnreachable(f"{shown}: no address")
    family, _, _, _, sockaddr = infos[0]
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise PeerUnreachable(f"{shown}: cannot create a socket ({exc.strerror or exc})") from exc
    conn: Connection | None = None
    try:
        enlarge_buffers(sock)
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        # A connected socket receives ICMP errors: a dead address fails fast.
        sock.connect(sockaddr)
        sock.setblocking(False)
        quic = engine.client_connection(
            datagram_size=size_for(str(sockaddr[0])), idle_timeout=config.idle_timeout
        )
        udp, protocol = await loop.create_datagram_endpoint(lambda: new_connection(quic, sock), sock=sock)
        conn = protocol
        conn.udp = udp
        conn.remote_address = shown
        conn.connect(sockaddr)
        await conn.wait_handshake(deadline)
        return conn
    except OSError as exc:
        if conn is None:
            sock.close()
        raise PeerUnreachable(f"{shown}: {exc.strerror or exc}") from exc
    except BaseException:
        if conn is None:
            sock.close()
        raise
    finally:
        if conn is not None and conn.state is State.HANDSHAKING:
            conn.abort("handshake did not finish")


def listener_address(host: str, port: int, family: int) -> tuple[Any, ...]:
    """`host:port` in the form a socket of `family` reports it (IPv4 on a dual-stack socket is
    IPv4-mapped IPv6), so a dialer on the listening socket sees its peer at the address it dialed."""
    ip = plain_ip(host)
    if ip is None:
        raise PeerUnreachable(f"{format_address(host, port)}: a punch needs an IP address")
    if family == socket.AF_INET6:
        text = f"::ffff:{ip}" if ip.version == 4 else str(ip)
        return (text, port, 0, 0)
    if ip.version == 6:
        raise PeerUnreachable(f"{format_address(host, port)}: this node listens on IPv4 only")
    return (str(ip), port)


async def connect_shared(
    host: str,
    port: int,
    deadline: float,
    *,
    config: TransportConfig,
    engine: QuicEngine,
    listener: Listener,
    new_connection: Callable[[Any], Connection],
    size_for: Callable[[str], int],
) -> Connection:
    """QUIC + TLS handshake with one address, sent from the listening socket.

    A NAT maps the listening socket to the address peers observe and were told; a dial through
    a punched hole must leave from there. QUIC's own retransmission of the Initial is the punch's
    retry: the first packets may meet the peer's NAT before the peer's punch opened it.
    """
    loop = asyncio.get_running_loop()
    deadline = min(deadline, loop.time() + config.handshake_timeout)
    shown = format_address(host, port)
    sockaddr = listener_address(host, port, listener.sock.family)
    quic = engine.client_connection(datagram_size=size_for(host), idle_timeout=config.idle_timeout)
    conn = new_connection(quic)
    try:
        listener.adopt(conn)
        conn.remote_address = shown
        conn.connect(sockaddr)
        await conn.wait_handshake(deadline)
        return conn
    finally:
        if conn.state is State.HANDSHAKING:
            conn.abort("handshake did not finish")


def send_step(conn: Connection, step: Step, where: str) -> None:
    """Send what a handshake step produced; close and raise AuthenticationError if it refused."""
    if step.refusal is not None:
        refusal: Refusal = step.refusal
        conn.close_with(refusal.code, refusal.reason, tell_peer=refusal.tell_peer)
        raise AuthenticationError(f"{where} refused: {refusal.reason}")
    for msg in step.send:
        conn.send_control(msg)


def refusal(where: str, gone: ConnectionGone) -> TransportError:
    if gone.code == CloseCode.WRONG_MESH:
        return AuthenticationError(
            f"{where} refused us: it belongs to a different mesh (check the invite token)"
        )
    if gone.code == CloseCode.AUTH_FAILED:
        return AuthenticationError(f"{where} refused our credentials (wrong mesh secret?)")
    if gone.code == CloseCode.SHUTDOWN:
        return PeerUnreachable(f"{where} is shutting down")
    return PeerUnreachable(f"{where} closed the connection during authentication: {gone}")


async def race(
    targets: list[tuple[str, int]],
    dial: Dial,
    problems: list[TransportError],
    connect: Callable[[str, int], Coroutine[Any, Any, Connection]],
    authenticate: Callable[[Connection, Dial], Awaitable[PeerLink]],
) -> PeerLink:
    """Connect to every target at once; the first that also authenticates wins, the rest abort.

    Every failure is added to `problems`; if none wins before the deadline, the error says why.
    """
    loop = asyncio.get_running_loop()
    attempts = [
        loop.create_task(
            connect(host, port),
            name=f"dial {format_address(host, port)}",
        )
        for host, port in targets
    ]
    winner: Connection | None = None
    try:
        pending: set[asyncio.Task[Connection]] = set(attempts)
        while pending:
            remaining = dial.deadline - loop.time()
            if remaining <= 0:
                break
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            # Every address that completed a handshake gets its turn at authentication, in
            # the order they answered: a stale address may now belong to another node.
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    problems.append(exc if isinstance(exc, TransportError) else PeerUnreachable(str(exc)))
                    continue
                conn = task.result()
                try:
                    link = await authenticate(conn, dial)
                except TransportError as auth_exc:
                    problems.append(auth_exc)
                    continue
                winner = conn
                return link
    finally:
        for task in attempts:
            task.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)
        for task in attempts:
            if not task.cancelled() and task.exception() is None and task.result() is not winner:
                task.result().abort("another address answered first")
    raise dial_failure(targets, dial, problems)


def parse_targets(
    addresses: Iterable[str], expected_node_id: str | None
) -> tuple[list[tuple[str, int]], list[TransportError]]:
    """The (host, port) of each usable address, and what was wrong with the others."""
    targets: list[tuple[str, int]] = []
    problems: list[TransportError] = []
    for address in addresses:
        try:
            targets.append(parse_address(address))
        except ConfigError as exc:
            problems.append(PeerUnreachable(str(exc)))
    if not targets:
        who = f"node {expected_node_id[:8]}" if expected_node_id else "peer"
        raise PeerUnreachable(f"no usable address for {who}: {'; '.join(map(str, problems)) or 'none given'}")
    return targets, problems
