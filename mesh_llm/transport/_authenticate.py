"""Mesh authentication on a fresh QUIC connection, both halves, and the link it ends in.

The messages and checks are the pure state machine of _handshake.py; this module drives it over
the connection's control stream with the dial's deadline (or the listener's auth timeout), and
settles duplicates through the link table (see _links.py for who wins when two nodes dial each
other at once). A peer that fails is closed with an error code and has received nothing but a
hello.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh_llm.errors import PeerUnreachable, TransportError
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import MeshCredentials
from mesh_llm.transport._codes import CloseCode
from mesh_llm.transport._config import TransportConfig
from mesh_llm.transport._connection import Connection
from mesh_llm.transport._dial import Dial, refusal, send_step
from mesh_llm.transport._handshake import DialerHandshake, Hello, ListenerHandshake
from mesh_llm.transport._link import PeerLink
from mesh_llm.transport._links import LinkTable, await_claim
from mesh_llm.transport._state import ConnectionGone, State

log = logging.getLogger("mesh_llm.transport")


def upgrades(existing: PeerLink, conn: Connection) -> bool:
    """Whether a new connection should replace an open link: a path that avoids a relay does."""
    return existing.relayed and conn.path != "relayed"


class Authenticator:
    """Runs either side of mesh authentication and installs the link that results.

    `on_linked(link)` is told of every new link (a first one, or one replacing an older link).
    """

    def __init__(
        self,
        identity: NodeIdentity,
        credentials: MeshCredentials,
        config: TransportConfig,
        table: LinkTable,
        own_certificate: bytes,
        on_linked: Callable[[PeerLink], None],
    ) -> None:
        self.identity = identity
        self.credentials = credentials
        self.config = config
        self._table = table
        self._own_certificate = own_certificate
        self._on_linked = on_linked

    async def outgoing(self, conn: Connection, dial: Dial) -> PeerLink:
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
            send_step(conn, handshake.start(), where)
            send_step(conn, handshake.receive(await conn.next_auth_message(dial.deadline)), where)
            theirs = handshake.peer
            assert theirs is not None
            existing = self._table.links.get(theirs.node_id)
            if existing is not None and not upgrades(existing, conn):
                conn.close_with(CloseCode.DUPLICATE, "already connected")
                return existing
            if dial.claim is None:
                other = self._table.claims.get(theirs.node_id)
                if other is not None:
                    conn.close_with(CloseCode.DUPLICATE, "another dial to this node is in progress")
                    return await await_claim(other, dial.deadline)
                dial.claim = self._table.claim(theirs.node_id)
            dial.claim.reached = True
            send_step(conn, handshake.prove(), where)
            send_step(conn, handshake.receive(await conn.next_auth_message(dial.deadline)), where)
            return self.install(conn, theirs)
        except TimeoutError:
            conn.close_with(CloseCode.AUTH_TIMEOUT, "authentication timed out")
            raise PeerUnreachable(f"{where}: authentication did not finish before the deadline") from None
        except ConnectionGone as gone:
            if gone.code == CloseCode.DUPLICATE and handshake.peer is not None:
                # The listener keeps a connection it prefers (see the module docstring).
                return await self._table.wait_for_link(handshake.peer.node_id, dial.deadline)
            raise refusal(where, gone) from None
        except BaseException:
            conn.close_with(CloseCode.GOODBYE, "dial cancelled")
            raise

    async def incoming(self, conn: Connection) -> None:
        """Run the listener's half of mesh authentication; close the connection on any failure."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.auth_timeout
        where = conn.remote_address
        handshake = ListenerHandshake(
            self.credentials,
            self.identity,
            self.config.stream_window,
            own_certificate=self._own_certificate,
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
            if not await self._table.admit(theirs.node_id, relayed=conn.path == "relayed"):
                conn.close_with(CloseCode.DUPLICATE, "duplicate connection", tell_peer="already connected")
                return
            if conn.state is State.CLOSED:
                return
            for msg in handshake.accept().send:
                conn.send_control(msg)
            self.install(conn, theirs)
        except TimeoutError:
            log.info("refused %s: no authentication within %g s", where, self.config.auth_timeout)
            conn.close_with(CloseCode.AUTH_TIMEOUT, "authentication timed out")
        except (ConnectionGone, TransportError) as exc:
            log.debug("connection from %s ended during authentication: %s", where, exc)
            conn.close_with(CloseCode.GOODBYE, "connection ended during authentication")

    def install(self, conn: Connection, hello: Hello) -> PeerLink:
        """Make an authenticated connection the peer's link, replacing an older one."""
        if conn.state is not State.AUTHENTICATING:  # it closed while the last message was read
            raise TransportError(f"connection to {conn.remote_address} lost: {conn.close_reason}")
        conn.peer_id = hello.node_id
        conn.peer_window = hello.window
        link = PeerLink(conn)
        old = self._table.links.get(hello.node_id)
        self._table.links[hello.node_id] = link
        if old is not None:
            old.replaced(link, self.config.retire_grace)
        conn.become_ready(link)
        log.info(
            "linked with %s at %s (%s, %s)",
            link.short_id,
            link.remote_address,
            "dialed" if conn.dialer else "accepted",
            link.path,
        )
        self._on_linked(link)
        self._table.linked(link)
        return link
