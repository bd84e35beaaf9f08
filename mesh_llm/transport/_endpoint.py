"""This node's QUIC endpoint: listen, dial, authenticate, one link per peer.

Every node runs one `MeshTransport`. It listens on one UDP socket (dual-stack "::" by default)
and dials peers from a fresh UDP socket per connection, except a dial through NATs (a punch),
which leaves from the listening socket whose mapping the peer was told. Peers that cannot reach
each other at all link through a member (see _relay.py); both ends run the same QUIC engine
interface (see _compat.py), and the authentication on top (_authenticate.py) drives the pure
state machine of _handshake.py. A peer that fails is closed with an error code and has received
nothing but a hello.

One link per peer (see _links.py for who wins when two nodes dial each other at once).

This module and _dial.py are the one seam where OSError and QUIC/TLS failures become
errors.py types.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from functools import partial
from typing import Any

from mesh_llm.errors import ConfigError, TransportError
from mesh_llm.peer.identity import NodeIdentity, is_node_id
from mesh_llm.peer.token import MeshCredentials, format_address, parse_address
from mesh_llm.transport._adapter import CidCallback
from mesh_llm.transport._authenticate import Authenticator
from mesh_llm.transport._codes import CloseCode
from mesh_llm.transport._compat import QuicEngine, ServerCredentials, load_engine
from mesh_llm.transport._config import TransportConfig
from mesh_llm.transport._connection import Connection
from mesh_llm.transport._dial import Dial, connect_quic, connect_shared, listener_address, parse_targets, race
from mesh_llm.transport._link import PeerLink
from mesh_llm.transport._links import LinkTable, await_claim
from mesh_llm.transport._listener import Listener, probe_datagram
from mesh_llm.transport._relay import RELAY_STREAM, RELAYED_STREAM
from mesh_llm.transport._relaying import Relaying
from mesh_llm.transport._streams import Stream
from mesh_llm.transport._tasks import MessageHandler, StreamHandler, TaskSet, serve_stream
from mesh_llm.transport._udp import bind_socket, datagram_size, display_address

log = logging.getLogger("mesh_llm.transport")


class MeshTransport:
    """This node's QUIC endpoint: listens, dials, authenticates, and keeps one link per peer.

    Callbacks (plain functions; one returning an awaitable has it run as a task):
      on_message(peer_id, msg)       every application message from any peer, in order per peer
      on_peer_connected(link)        a peer got a link, or its link was replaced by a newer one
      on_peer_lost(peer_id, reason)  a peer's link ended and no replacement exists
      on_probe(payload, address)     an address probe arrived on the listening socket from
                                     "host:port" (see _listener.py)
    Incoming streams go to handlers registered with `on_stream(kind, handler)`.
    """

    def __init__(
        self,
        identity: NodeIdentity,
        credentials: MeshCredentials,
        *,
        host: str = "::",
        port: int = 0,
        config: TransportConfig,
    ) -> None:
        self.identity = identity
        self.credentials = credentials
        self.config = config  # built by the caller
        self.on_message: MessageHandler | None = None
        self.on_peer_connected: Callable[[PeerLink], object] | None = None
        self.on_peer_lost: Callable[[str, str], object] | None = None
        self.on_probe: Callable[[bytes, str], object] | None = None
        self._host = host
        self._requested_port = port
        self._port = 0
        self._engine: QuicEngine = load_engine(self.config.quic_engine)
        self._listener: Listener | None = None
        self._closed = False
        self._stream_handlers: dict[str, StreamHandler] = {}
        self._table = LinkTable(identity.node_id, self.config.liveness_probe_timeout)
        self._links = self._table.links  # the table's own dicts, read here often
        self._claims = self._table.claims
        self._connections: set[Connection] = set()
        self._tasks = TaskSet()
        self._server_credentials: ServerCredentials = self._engine.server_credentials(
            *identity.tls_certificate()
        )
        self._auth = Authenticator(
            identity,
            credentials,
            config,
            self._table,
            self._server_credentials.certificate_der,
            lambda link: self._tasks.notify(self.on_peer_connected, link),
        )
        # Relayed links: `relays.policy` says whom this node relays for; it counts what it carries.
        self.relays = Relaying(self, self._engine, self._server_credentials, config.relay_bytes_per_s)
        self._stream_handlers[RELAY_STREAM] = self.relays.serve_relay
        self._stream_handlers[RELAYED_STREAM] = self.relays.serve_relayed

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

    def suspects(self) -> frozenset[str]:
        """Peers linked but silent to pings for `suspect_silence` or longer: likely frozen, though
        their connection is still open. Routing tries their hosts last."""
        after = self.config.suspect_silence
        return frozenset(n for n, link in self._links.items() if link.is_open and link.silent_s >= after)

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
            _, listener = await loop.create_datagram_endpoint(
                lambda: Listener(self._incoming, sock, self._probe_in), sock=sock
            )
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
        await self._tasks.cancel_all(self.config.close_timeout)
        for conn in connections:
            if conn.udp is not None:
                conn.udp.close()
        if self._listener is not None:
            self._listener.close()
        self._table.fail_all(TransportError("transport closed"))

    def _datagram_size(self, host: str) -> int:
        return datagram_size(
            host, default=self.config.max_datagram_size, same_host=self.config.same_host_datagram_size
        )

    def _outgoing(self, quic: Any, sock: socket.socket) -> Connection:
        return Connection(quic, owner=self, engine=self._engine, dialer=True, sock=sock)

    def _punching(self, quic: Any) -> Connection:
        assert self._listener is not None
        listener = self._listener
        conn = Connection(
            quic,
            owner=self,
            engine=self._engine,
            dialer=True,
            send_sock=listener.sock,
            on_cid=listener.on_cid,
        )
        conn.path = "punched"
        return conn

    def relayed_connection(self, quic: Any, *, dialer: bool, relay: str) -> Connection:
        conn = Connection(
            quic, owner=self, engine=self._engine, dialer=dialer, remote_address=f"via {relay[:8]}"
        )
        conn.path, conn.relay = "relayed", relay
        return conn

    # --- address probes ---------------------------------------------------------------------

    def send_probe(self, address: str, payload: bytes) -> None:
        """Send an address probe from the listening socket to "host:port" (an IP address)."""
        self._check_running()
        assert self._listener is not None
        host, port = parse_address(address)
        self._listener.send(probe_datagram(payload), listener_address(host, port, self._listener.sock.family))

    def _probe_in(self, payload: bytes, addr: Any) -> None:
        if not self._closed:
            self._tasks.notify(self.on_probe, payload, display_address(addr))

    def _incoming(
        self, addr: Any, original_dcid: bytes, send_sock: socket.socket, on_cid: CidCallback
    ) -> Connection | None:
        """A listener's connection for a new client at `addr` (None once closed)."""
        if self._closed:
            return None
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
        *,
        punch: bool = False,
    ) -> PeerLink:
        """Connect to a peer at any of `addresses` ("host:port"), tried concurrently.

        With `punch`, the dial leaves from the listening socket (addresses must be IPs): the
        peer, told of it by a member linked to both, is sending probes towards our mapping.
        Returns the existing link if there already is one to that node (either direction),
        unless that link is relayed: a direct or punched link then replaces it.
        Raises AuthenticationError if a peer answered but failed authentication (wrong mesh,
        wrong secret, not `expected_node_id`), PeerUnreachable if nothing answered in time.
        """
        self._check_running()
        loop = asyncio.get_running_loop()
        timeout = self.config.dial_timeout if timeout is None else timeout
        dial = Dial(expected_node_id, loop.time() + timeout)
        if expected_node_id is not None:
            if not is_node_id(expected_node_id):
                raise ConfigError(f"{expected_node_id!r} is not a node id")
            if expected_node_id == self.node_id:
                raise ConfigError("refusing to dial this node's own id")
            link = self._links.get(expected_node_id)
            if link is not None and not link.relayed:
                return link
            claim = self._claims.get(expected_node_id)
            if claim is not None:
                return await await_claim(claim, dial.deadline)
        targets, problems = parse_targets(addresses, expected_node_id)
        if expected_node_id is not None:
            dial.claim = self._table.claim(expected_node_id)
        try:
            link = await race(targets, dial, problems, self._connect(dial, punch), self._auth.outgoing)
        except BaseException as exc:
            if dial.claim is not None:
                dial.claim.fail(exc)
            raise
        finally:
            if dial.claim is not None:
                self._table.release(dial.claim)
        if dial.claim is not None:
            dial.claim.succeed(link)
        return link

    def _connect(self, dial: Dial, punch: bool) -> Callable[[str, int], Coroutine[Any, Any, Connection]]:
        sizes = self._datagram_size
        if punch:
            assert self._listener is not None
            return partial(connect_shared, deadline=dial.deadline, config=self.config, engine=self._engine,
                           listener=self._listener, new_connection=self._punching, size_for=sizes)  # fmt: skip
        return partial(connect_quic, deadline=dial.deadline, config=self.config, engine=self._engine,
                       new_connection=self._outgoing, size_for=sizes)  # fmt: skip

    async def dial_via(self, relay_id: str, node_id: str, timeout: float | None = None) -> PeerLink:
        """Link to `node_id` through the member `relay_id` (see _relay.py); the two ends
        authenticate each other end to end. Returns an existing link to `node_id` if any."""
        self._check_running()
        if not is_node_id(node_id) or node_id == self.node_id:
            raise ConfigError(f"{node_id!r} is not another node's id")
        loop = asyncio.get_running_loop()
        dial = Dial(node_id, loop.time() + (self.config.dial_timeout if timeout is None else timeout))
        link = self._links.get(node_id)
        if link is not None:
            return link
        claim = self._claims.get(node_id)
        if claim is not None:
            return await await_claim(claim, dial.deadline)
        dial.claim = self._table.claim(node_id)
        try:
            conn = await self.relays.connect_via(relay_id, node_id, dial.deadline)
            link = await self._auth.outgoing(conn, dial)
        except BaseException as exc:
            dial.claim.fail(exc)
            raise
        finally:
            self._table.release(dial.claim)
        dial.claim.succeed(link)
        return link

    # --- accepting --------------------------------------------------------------------------

    def accept_handshake(self, conn: Connection) -> None:
        if self._closed:
            conn.close_with(CloseCode.SHUTDOWN, "transport closed", tell_peer="shutting down")
            return
        self.spawn(self._auth.incoming(conn), name=f"auth {conn.remote_address}")

    # --- links ------------------------------------------------------------------------------

    def connection_opened(self, conn: Connection) -> None:
        self._connections.add(conn)

    def connection_closed(self, conn: Connection, reason: str) -> None:
        self._connections.discard(conn)
        if conn.link is not None and self._links.get(conn.link.node_id) is conn.link:
            del self._links[conn.link.node_id]
            log.info("lost %s: %s", conn.link.short_id, reason)
            self._tasks.notify(self.on_peer_lost, conn.link.node_id, reason)

    def deliver_message(self, conn: Connection, msg: dict[str, Any]) -> None:
        assert conn.peer_id is not None
        self._tasks.notify(self.on_message, conn.peer_id, msg)

    def stream_handler(self, kind: str) -> StreamHandler | None:
        return self._stream_handlers.get(kind)

    def run_stream_handler(
        self, conn: Connection, stream: Stream, handler: StreamHandler, header: dict[str, Any]
    ) -> None:
        assert conn.peer_id is not None
        self.spawn(
            serve_stream(conn.peer_id, stream, handler, header),
            name=f"stream {stream.kind} {conn.peer_id[:8]}",
        )

    # --- helpers ----------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._listener is None:
            raise TransportError("the transport is not started")
        if self._closed:
            raise TransportError("the transport is closed")

    def spawn(self, awaitable: Awaitable[Any], name: str | None = None) -> None:
        """Run `awaitable` as a transport task: logged if it fails, cancelled on close."""
        self._tasks.spawn(awaitable, name)
