"""This node's QUIC endpoint: listen, dial, authenticate, one link per peer.

Every node runs one `MeshTransport`. It listens on one UDP socket (dual-stack "::" by default)
and dials peers from a fresh UDP socket per connection; both ends run the same QUIC engine
interface (see _compat.py), and the authentication on top is the pure state machine of
_handshake.py. A peer that fails is closed with an error code and has received nothing but a
hello.

One link per peer: a dial to a node we already have a link with returns that link. When two
nodes dial each other at once, the connection initiated by the lower node id wins on both
sides: the listener refuses (DUPLICATE) an incoming connection from a higher id while its own
dial to that id has reached it, and the refused dialer waits for the winning link instead.

This module is the one seam where OSError and QUIC/TLS failures become errors.py types.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mesh_llm.errors import AuthenticationError, ConfigError, PeerUnreachable, TransportError
from mesh_llm.mesh.identity import NodeIdentity, is_node_id
from mesh_llm.mesh.token import MeshCredentials, format_address, parse_address
from mesh_llm.transport._codes import CloseCode, StreamCode
from mesh_llm.transport._compat import QuicEngine, ServerCredentials, load_engine
from mesh_llm.transport._config import TransportConfig
from mesh_llm.transport._connection import Connection, ConnectionGone, PeerLink, State, display_address
from mesh_llm.transport._handshake import DialerHandshake, Hello, ListenerHandshake, Refusal, Step
from mesh_llm.transport._streams import MeshStreamReader, MeshStreamWriter, Stream
from mesh_llm.transport._udp import bind_socket, datagram_size, drain_socket, enlarge_buffers

log = logging.getLogger("mesh_llm.transport")

MessageHandler = Callable[[str, dict[str, Any]], object]
StreamHandler = Callable[[str, dict[str, Any], MeshStreamReader, MeshStreamWriter], Awaitable[None]]


class _Claim:
    """An outgoing dial to a known node id: later dials wait on it; listeners consult it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.future: asyncio.Future[PeerLink] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.reached = False  # the peer answered our hello: our connection can win a race


@dataclass
class _Dial:
    expected: str | None
    deadline: float
    claim: _Claim | None = None


class MeshTransport:
    """This node's QUIC endpoint: listens, dials, authenticates, and keeps one link per peer.

    Callbacks (plain functions; one returning an awaitable has it run as a task):
      on_message(peer_id, msg)       every application message from any peer, in order per peer
      on_peer_connected(link)        a peer got a link, or its link was replaced by a newer one
      on_peer_lost(peer_id, reason)  a peer's link ended and no replacement exists
    Incoming streams go to handlers registered with `on_stream(kind, handler)`.
    """

    def __init__(
        self,
        identity: NodeIdentity,
        credentials: MeshCredentials,
        *,
        host: str = "::",
        port: int = 0,
        config: TransportConfig | None = None,
    ) -> None:
        self.identity = identity
        self.credentials = credentials
        self.config = config or TransportConfig()
        self.on_message: MessageHandler | None = None
        self.on_peer_connected: Callable[[PeerLink], object] | None = None
        self.on_peer_lost: Callable[[str, str], object] | None = None
        self._host = host
        self._requested_port = port
        self._port = 0
        self._engine: QuicEngine = load_engine(self.config.quic_engine)
        self._listener: _Listener | None = None
        self._closed = False
        self._stream_handlers: dict[str, StreamHandler] = {}
        self._links: dict[str, PeerLink] = {}
        self._claims: dict[str, _Claim] = {}
        self._link_waiters: dict[str, list[asyncio.Future[PeerLink]]] = {}
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server_credentials: ServerCredentials = self._engine.server_credentials(
            *identity.tls_certificate()
        )

    # --- properties -------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.identity.node_id

    @property
    def engine(self) -> str:
        """The QUIC engine this node runs on, with its version ("qh3 2.1.0")."""
        return repr(self._engine)

    @property
    def port(self) -> int:
        """The bound UDP port (0 before start())."""
        return self._port

    @property
    def links(self) -> dict[str, PeerLink]:
        """A snapshot of the current links by peer node id."""
        return dict(self._links)

    def link(self, node_id: str) -> PeerLink | None:
        """The open link to `node_id`, if any."""
        return self._links.get(node_id)

    def on_stream(self, kind: str, handler: StreamHandler) -> None:
        """Handle incoming streams of `kind` with `async handler(peer_id, header, reader, writer)`.

        When the handler returns, the writer is closed (EOF) if it was not, and the peer is told
        to stop sending if the handler did not read to EOF. If it raises, the stream is reset.
        Streams of a kind with no handler are reset.
        """
        if not kind or kind.startswith("_"):
            raise ConfigError(f"stream kind {kind!r} is empty or reserved")
        self._stream_handlers[kind] = handler

    # --- start and stop ---------------------------------------------------------------------

    async def start(self) -> int:
        """Bind the UDP socket and start accepting connections; return the bound port."""
        if self._listener is not None or self._closed:
            raise TransportError("a transport can be started once")
        sock, self._host = bind_socket(self._host, self._requested_port)
        loop = asyncio.get_running_loop()
        try:
            _, listener = await loop.create_datagram_endpoint(lambda: _Listener(self, sock), sock=sock)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot listen on UDP {self._host}:{self._requested_port}: {exc}") from exc
        self._listener = listener
        self._port = sock.getsockname()[1]
        log.info(
            "node %s listening on UDP %s (QUIC: %s)",
            self.identity.short_id,
            format_address(self._host, self._port),
            self._engine,
        )
        return self._port

    async def close(self) -> None:
        """Close every connection (peers see a shutdown code), stop listening, stop all tasks."""
        if self._closed:
            return
        self._closed = True
        connections = list(self._connections)
        for conn in connections:
            conn.close_with(CloseCode.SHUTDOWN, "transport closed", tell_peer="shutting down")
        # Give CONNECTION_CLOSE frames and the closing period a moment; never wait long.
        if connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(conn.wait_closed() for conn in connections), return_exceptions=True),
                    self.config.close_timeout,
                )
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), self.config.close_timeout
                )
        for conn in connections:
            if conn.udp is not None:
                conn.udp.close()
        if self._listener is not None:
            self._listener.close()
        for claim in self._claims.values():
            if not claim.future.done():
                claim.future.set_exception(TransportError("transport closed"))
        for waiters in self._link_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(TransportError("transport closed"))

    def _datagram_size(self, host: str) -> int:
        return datagram_size(
            host, default=self.config.max_datagram_size, same_host=self.config.same_host_datagram_size
        )

    def _incoming(self, addr: Any, original_dcid: bytes, send_sock: socket.socket, on_cid: Any) -> Connection:
        """A listener's connection for a new client at `addr`."""
        quic = self._engine.server_connection(
            self._server_credentials,
            datagram_size=self._datagram_size(str(addr[0])),
            idle_timeout=self.config.idle_timeout,
            original_dcid=original_dcid,
        )
        return Connection(
            quic,
            owner=self,
            engine=self._engine,
            dialer=False,
            send_sock=send_sock,
            on_cid=on_cid,
            remote_address=display_address(addr),
        )

    # --- dialing ----------------------------------------------------------------------------

    async def dial(
        self,
        addresses: Iterable[str],
        expected_node_id: str | None = None,
        timeout: float | None = None,
    ) -> PeerLink:
        """Connect to a peer at any of `addresses` ("host:port"), tried concurrently.

        Returns the existing link if there already is one to that node (either direction).
        Raises AuthenticationError if a peer answered but failed authentication (wrong mesh,
        wrong secret, not `expected_node_id`), PeerUnreachable if nothing answered in time.
        """
        self._check_running()
        loop = asyncio.get_running_loop()
        timeout = self.config.dial_timeout if timeout is None else timeout
        dial = _Dial(expected_node_id, loop.time() + timeout)
        if expected_node_id is not None:
            if not is_node_id(expected_node_id):
                raise ConfigError(f"{expected_node_id!r} is not a node id")
            if expected_node_id == self.node_id:
                raise ConfigError("refusing to dial this node's own id")
            link = self._links.get(expected_node_id)
            if link is not None:
                return link
            claim = self._claims.get(expected_node_id)
            if claim is not None:
                return await self._await_claim(claim, dial.deadline)
        addresses = list(addresses)
        targets: list[tuple[str, int]] = []
        problems: list[TransportError] = []
        for address in addresses:
            try:
                targets.append(parse_address(address))
            except ConfigError as exc:
                problems.append(PeerUnreachable(str(exc)))
        who = f"node {expected_node_id[:8]}" if expected_node_id else "peer"
        if not targets:
            raise PeerUnreachable(
                f"no usable address for {who}: {'; '.join(map(str, problems)) or 'none given'}"
            )
        if expected_node_id is not None:
            dial.claim = self._claim(expected_node_id)
        try:
            link = await self._dial_targets(targets, dial, problems)
        except BaseException as exc:
            if dial.claim is not None and not dial.claim.future.done():
                if isinstance(exc, Exception):
                    dial.claim.future.set_exception(exc)
                else:
                    dial.claim.future.cancel()
            raise
        finally:
            if dial.claim is not None and self._claims.get(dial.claim.node_id) is dial.claim:
                del self._claims[dial.claim.node_id]
        if dial.claim is not None and not dial.claim.future.done():
            dial.claim.future.set_result(link)
        return link

    def _claim(self, node_id: str) -> _Claim:
        claim = _Claim(node_id)
        self._claims[node_id] = claim
        return claim

    async def _await_claim(self, claim: _Claim, deadline: float) -> PeerLink:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(asyncio.shield(claim.future), max(remaining, 0))
        except TimeoutError:
            raise PeerUnreachable(
                f"timed out waiting for a dial to node {claim.node_id[:8]} in progress"
            ) from None

    async def _dial_targets(
        self, targets: list[tuple[str, int]], dial: _Dial, problems: list[TransportError]
    ) -> PeerLink:
        loop = asyncio.get_running_loop()
        attempts = [
            loop.create_task(
                self._connect(host, port, dial.deadline), name=f"dial {format_address(host, port)}"
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
                        link = await self._authenticate_outgoing(conn, dial)
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
        raise self._dial_failure(targets, dial, problems)

    def _dial_failure(
        self, targets: list[tuple[str, int]], dial: _Dial, problems: list[TransportError]
    ) -> TransportError:
        who = f"node {dial.expected[:8]}" if dial.expected else "peer"
        where = ", ".join(format_address(h, p) for h, p in targets)
        auth = [p for p in problems if isinstance(p, AuthenticationError)]
        if auth:
            return AuthenticationError("; ".join(str(p) for p in auth))
        detail = "; ".join(str(p) for p in problems) or "no answer before the deadline"
        return PeerUnreachable(f"could not reach {who} at {where}: {detail}")

    async def _connect(self, host: str, port: int, deadline: float) -> Connection:
        """QUIC + TLS handshake with one address; the caller authenticates the result."""
        loop = asyncio.get_running_loop()
        deadline = min(deadline, loop.time() + self.config.handshake_timeout)
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
            quic = self._engine.client_connection(
                datagram_size=self._datagram_size(str(sockaddr[0])), idle_timeout=self.config.idle_timeout
            )
            udp, protocol = await loop.create_datagram_endpoint(
                lambda: Connection(quic, owner=self, engine=self._engine, dialer=True, sock=sock), sock=sock
            )
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

    async def _authenticate_outgoing(self, conn: Connection, dial: _Dial) -> PeerLink:
        """Run the dialer's half of mesh authentication on a fresh connection."""
        where = conn.remote_address
        handshake = DialerHandshake(
            self.credentials,
            self.identity,
            self.config.stream_window,
            listener_certificate=conn.peer_certificate(),
            expected_node_id=dial.expected,
        )
        try:
            self._send_step(conn, handshake.start(), where)
            self._send_step(conn, handshake.receive(await conn.next_auth_message(dial.deadline)), where)
            theirs = handshake.peer
            assert theirs is not None
            existing = self._links.get(theirs.node_id)
            if existing is not None:
                conn.close_with(CloseCode.DUPLICATE, "already connected")
                return existing
            if dial.claim is None:
                other = self._claims.get(theirs.node_id)
                if other is not None:
                    conn.close_with(CloseCode.DUPLICATE, "another dial to this node is in progress")
                    return await self._await_claim(other, dial.deadline)
                dial.claim = self._claim(theirs.node_id)
            dial.claim.reached = True
            self._send_step(conn, handshake.prove(), where)
            self._send_step(conn, handshake.receive(await conn.next_auth_message(dial.deadline)), where)
            return self._install(conn, theirs)
        except TimeoutError:
            conn.close_with(CloseCode.AUTH_TIMEOUT, "authentication timed out")
            raise PeerUnreachable(f"{where}: authentication did not finish before the deadline") from None
        except ConnectionGone as gone:
            if gone.code == CloseCode.DUPLICATE and handshake.peer is not None:
                # The listener keeps a connection it prefers (see the module docstring).
                return await self._wait_for_link(handshake.peer.node_id, dial.deadline)
            raise self._refusal(where, gone) from None
        except BaseException:
            conn.close_with(CloseCode.GOODBYE, "dial cancelled")
            raise

    @staticmethod
    def _send_step(conn: Connection, step: Step, where: str) -> None:
        """Send what a handshake step produced; close and raise AuthenticationError if it refused."""
        if step.refusal is not None:
            refusal: Refusal = step.refusal
            conn.close_with(refusal.code, refusal.reason, tell_peer=refusal.tell_peer)
            raise AuthenticationError(f"{where} refused: {refusal.reason}")
        for msg in step.send:
            conn.send_control(msg)

    def _refusal(self, where: str, gone: ConnectionGone) -> TransportError:
        if gone.code == CloseCode.WRONG_MESH:
            return AuthenticationError(
                f"{where} refused us: it belongs to a different mesh (check the invite token)"
            )
        if gone.code == CloseCode.AUTH_FAILED:
            return AuthenticationError(f"{where} refused our credentials (wrong mesh secret?)")
        if gone.code == CloseCode.SHUTDOWN:
            return PeerUnreachable(f"{where} is shutting down")
        return PeerUnreachable(f"{where} closed the connection during authentication: {gone}")

    async def _wait_for_link(self, node_id: str, deadline: float) -> PeerLink:
        link = self._links.get(node_id)
        if link is not None:
            return link
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[PeerLink] = loop.create_future()
        self._link_waiters.setdefault(node_id, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, max(deadline - loop.time(), 0))
        except TimeoutError:
            raise PeerUnreachable(
                f"node {node_id[:8]} kept its own connection to us, but it did not complete in time"
            ) from None
        finally:
            waiters = self._link_waiters.get(node_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._link_waiters.pop(node_id, None)

    # --- accepting --------------------------------------------------------------------------

    def _accept_handshake(self, conn: Connection) -> None:
        if self._closed:
            conn.close_with(CloseCode.SHUTDOWN, "transport closed", tell_peer="shutting down")
            return
        self._spawn(self._authenticate_incoming(conn), name=f"auth {conn.remote_address}")

    async def _authenticate_incoming(self, conn: Connection) -> None:
        """Run the listener's half of mesh authentication; close the connection on any failure."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.auth_timeout
        where = conn.remote_address
        handshake = ListenerHandshake(
            self.credentials,
            self.identity,
            self.config.stream_window,
            own_certificate=self._server_credentials.certificate_der,
        )
        try:
            while not handshake.identified:
                step = handshake.receive(await conn.next_auth_message(deadline))
                if step.refusal is not None:
                    log.info("refused %s: %s", where, step.refusal.reason)
                    conn.close_with(step.refusal.code, step.refusal.reason, tell_peer=step.refusal.tell_peer)
                    return
                for msg in step.send:
                    conn.send_control(msg)
            theirs = handshake.peer
            assert theirs is not None
            if not await self._admit(theirs.node_id):
                conn.close_with(CloseCode.DUPLICATE, "duplicate connection", tell_peer="already connected")
                return
            if conn.state is State.CLOSED:
                return
            for msg in handshake.accept().send:
                conn.send_control(msg)
            self._install(conn, theirs)
        except TimeoutError:
            log.info("refused %s: no authentication within %g s", where, self.config.auth_timeout)
            conn.close_with(CloseCode.AUTH_TIMEOUT, "authentication timed out")
        except (ConnectionGone, TransportError) as exc:
            log.debug("connection from %s ended during authentication: %s", where, exc)
            conn.close_with(CloseCode.GOODBYE, "connection ended during authentication")

    async def _admit(self, node_id: str) -> bool:
        """Whether an authenticated incoming connection from `node_id` should become its link.

        The connection initiated by the lower node id wins when both exist; a peer that dials
        us again while we hold a link it initiated has evidently lost that link (restart).
        """
        existing = self._links.get(node_id)
        if existing is None:
            claim = self._claims.get(node_id)
            if claim is None or node_id < self.node_id:
                return True
            if claim.reached:
                return False
            # Our own dial to them is under way and is the one that should win; if we decided
            # before it heard back, the two sides could settle on different connections (or on
            # theirs). Give it a moment to settle; a dial to a dead address does not hold us long.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(claim.future), self.config.liveness_probe_timeout)
            existing = self._links.get(node_id)
            if existing is None:
                return True
        if not existing.initiated_locally or node_id < self.node_id:
            return True
        # We dialed them before and they are the higher id, so our link should win, unless it
        # is dead and they restarted: ask it.
        alive = await existing.ping(self.config.liveness_probe_timeout)
        return not (alive and self._links.get(node_id) is existing)

    # --- links ------------------------------------------------------------------------------

    def _install(self, conn: Connection, hello: Hello) -> PeerLink:
        conn.peer_id = hello.node_id
        conn.peer_window = hello.window
        link = PeerLink(conn)
        old = self._links.get(hello.node_id)
        self._links[hello.node_id] = link
        if old is not None:
            old._conn.close_with(CloseCode.DUPLICATE, "replaced by a newer connection", tell_peer="replaced")
        conn.become_ready(link)
        log.info(
            "linked with %s at %s (%s)",
            link.short_id,
            link.remote_address,
            "dialed" if conn.dialer else "accepted",
        )
        self._notify(self.on_peer_connected, link)
        for waiter in self._link_waiters.pop(hello.node_id, []):
            if not waiter.done():
                waiter.set_result(link)
        return link

    def _connection_closed(self, conn: Connection, reason: str) -> None:
        self._connections.discard(conn)
        if conn.link is not None and self._links.get(conn.link.node_id) is conn.link:
            del self._links[conn.link.node_id]
            log.info("lost %s: %s", conn.link.short_id, reason)
            self._notify(self.on_peer_lost, conn.link.node_id, reason)

    def _deliver_message(self, conn: Connection, msg: dict[str, Any]) -> None:
        assert conn.peer_id is not None
        self._notify(self.on_message, conn.peer_id, msg)

    def _run_stream_handler(
        self, conn: Connection, stream: Stream, handler: StreamHandler, header: dict[str, Any]
    ) -> None:
        assert conn.peer_id is not None
        self._spawn(
            self._stream_task(conn.peer_id, stream, handler, header),
            name=f"stream {stream.kind} {conn.peer_id[:8]}",
        )

    async def _stream_task(
        self, peer_id: str, stream: Stream, handler: StreamHandler, header: dict[str, Any]
    ) -> None:
        try:
            await handler(peer_id, header, stream.reader, stream.writer)
        except asyncio.CancelledError:
            stream.abort(StreamCode.CANCELLED, "stream handler cancelled")
            raise
        except Exception:
            log.exception("handler for stream %r from %s failed", stream.kind, peer_id[:8])
            stream.abort(StreamCode.HANDLER_FAILED, "stream handler failed")
        else:
            stream.writer.close()
            if not stream.reader.finished:
                # Nobody will read the rest: tell the peer instead of letting it block on credit.
                stream.conn.stop_stream(stream.id, StreamCode.CANCELLED)
                stream.reader._fail(TransportError("stream handler finished"))

    # --- helpers ----------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._listener is None:
            raise TransportError("the transport is not started")
        if self._closed:
            raise TransportError("the transport is closed")

    def _spawn(self, awaitable: Awaitable[Any], name: str | None = None) -> None:
        task = asyncio.ensure_future(awaitable)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("transport task %s failed", task.get_name(), exc_info=task.exception())

    def _notify(self, callback: Callable[..., object] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                self._spawn(result, name=f"callback {getattr(callback, '__name__', 'callback')}")
        except Exception:
            log.exception("transport callback %r failed", callback)


def _destination_cid(data: bytes, short_cid_length: int) -> tuple[bytes, bool] | None:
    """A QUIC packet's destination connection id, and whether it is a version-1 Initial.

    Read from the version-independent invariants (RFC 8999): long headers carry the id's
    length, short headers carry ids of the length this endpoint issues. None if malformed.
    """
    if not data:
        return None
    if data[0] & 0x80:  # long header
        if len(data) < 6:
            return None
        length = data[5]
        if length > 20 or len(data) < 6 + length:
            return None
        version = int.from_bytes(data[1:5], "big")
        is_initial = version == 1 and (data[0] & 0x30) == 0
        return bytes(data[6 : 6 + length]), is_initial
    if len(data) < 1 + short_cid_length:
        return None
    return bytes(data[1 : 1 + short_cid_length]), False


class _Listener(asyncio.DatagramProtocol):
    """The listening socket: routes datagrams to connections by connection id, creates new ones.

    A new connection starts only from a version-1 Initial of at least 1200 bytes (RFC 9000's
    minimum, which also bounds what an address spoofer can make us send). Anything else for an
    unknown connection id is dropped: neither engine's peers need version negotiation or retry.
    """

    CID_LENGTH = 8  # both engines' default connection id length

    def __init__(self, owner: MeshTransport, sock: socket.socket) -> None:
        self._owner = owner
        self._sock = sock
        self._transport: asyncio.DatagramTransport | None = None
        self._by_cid: dict[bytes, Connection] = {}
        self._cids: dict[Connection, set[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        touched: dict[int, Connection] = {}
        self._route(data, addr, touched)
        drain_socket(
            self._sock,
            self._transport,
            lambda more, sender: self._route(more, sender, touched),
            self.error_received,
        )
        for conn in touched.values():
            conn.datagrams_done()

    def error_received(self, exc: Exception) -> None:
        log.debug("listening socket error: %s", exc)

    def _route(self, data: bytes, addr: Any, touched: dict[int, Connection]) -> None:
        parsed = _destination_cid(data, self.CID_LENGTH)
        if parsed is None:
            return
        cid, is_initial = parsed
        conn = self._by_cid.get(cid)
        if conn is None:
            if not is_initial or len(data) < 1200 or self._owner._closed:
                return
            conn = self._owner._incoming(addr, cid, self._sock, self._on_cid)
            conn.connection_made(self._transport)  # type: ignore[arg-type]
            self._on_cid(conn, cid, True)
            self._on_cid(conn, conn.host_cid, True)  # the id it answers from (no event says so)
        conn.datagram_in(data, addr)
        touched[id(conn)] = conn

    def _on_cid(self, conn: Connection, cid: bytes, issued: bool) -> None:
        if issued:
            self._by_cid[cid] = conn
            self._cids.setdefault(conn, set()).add(cid)
        elif cid:
            self._by_cid.pop(cid, None)
            self._cids.get(conn, set()).discard(cid)
        else:  # the connection ended: forget all its ids
            for known in self._cids.pop(conn, set()):
                if self._by_cid.get(known) is conn:
                    del self._by_cid[known]
