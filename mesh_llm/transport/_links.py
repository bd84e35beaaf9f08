"""One link per peer: the links by node id, dials under way (claims), and who wins a race.

A dial to a node we already have a link with returns that link. When two nodes dial each other
at once, the connection initiated by the lower node id wins on both sides: the listener refuses
(DUPLICATE) an incoming connection from a higher id while its own dial to that id has reached
it, and the refused dialer waits for the winning link instead.
"""

from __future__ import annotations

import asyncio
import contextlib

from mesh_llm.errors import PeerUnreachable, TransportError
from mesh_llm.transport._link import PeerLink


class Claim:
    """An outgoing dial to a known node id: later dials wait on it; listeners consult it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.future: asyncio.Future[PeerLink] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.reached = False  # the peer answered our hello: our connection can win a race

    def succeed(self, link: PeerLink) -> None:
        if not self.future.done():
            self.future.set_result(link)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            if isinstance(exc, Exception):
                self.future.set_exception(exc)
            else:
                self.future.cancel()


async def await_claim(claim: Claim, deadline: float) -> PeerLink:
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(asyncio.shield(claim.future), max(remaining, 0))
    except TimeoutError:
        raise PeerUnreachable(
            f"timed out waiting for a dial to node {claim.node_id[:8]} in progress"
        ) from None


class LinkTable:
    """This node's links and claims, by peer node id."""

    def __init__(self, own_id: str, probe_timeout: float) -> None:
        self._own_id = own_id
        self._probe_timeout = probe_timeout
        self.links: dict[str, PeerLink] = {}
        self.claims: dict[str, Claim] = {}
        self._waiters: dict[str, list[asyncio.Future[PeerLink]]] = {}

    def claim(self, node_id: str) -> Claim:
        """Record a dial to `node_id` under way."""
        claim = Claim(node_id)
        self.claims[node_id] = claim
        return claim

    def release(self, claim: Claim) -> None:
        if self.claims.get(claim.node_id) is claim:
            del self.claims[claim.node_id]

    def linked(self, link: PeerLink) -> None:
        """`link` was installed: wake whoever waits for a link to its node."""
        for waiter in self._waiters.pop(link.node_id, []):
            if not waiter.done():
                waiter.set_result(link)

    def fail_all(self, exc: TransportError) -> None:
        """The transport closed: fail every claim and waiter with `exc`."""
        for claim in self.claims.values():
            if not claim.future.done():
                claim.future.set_exception(exc)
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)

    async def wait_for_link(self, node_id: str, deadline: float) -> PeerLink:
        link = self.links.get(node_id)
        if link is not None:
            return link
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[PeerLink] = loop.create_future()
        self._waiters.setdefault(node_id, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, max(deadline - loop.time(), 0))
        except TimeoutError:
            raise PeerUnreachable(
                f"node {node_id[:8]} kept its own connection to us, but it did not complete in time"
            ) from None
        finally:
            waiters = self._waiters.get(node_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(node_id, None)

    async def admit(self, node_id: str, *, relayed: bool = False) -> bool:
        """Whether an authenticated incoming connection from `node_id` should become its link.

        A path without a relay beats a relayed one, both ways. Otherwise the connection
        initiated by the lower node id wins when both exist; a peer that dials us again while
        we hold a link it initiated has evidently lost that link (restart).
        """
        existing = self.links.get(node_id)
        if existing is not None and existing.is_open and existing.relayed != relayed:
            if relayed:
                return False
            # It replaces a relayed link, unless both ends dialed past the relay at once: then
            # the race below settles which connection both keep.
            existing = None
        if existing is None:
            claim = self.claims.get(node_id)
            if claim is None or node_id < self._own_id:
                return True
            if claim.reached:
                return False
            # Our own dial to them is under way and is the one that should win; if we decided
            # before it heard back, the two sides could settle on different connections (or on
            # theirs). Give it a moment to settle; a dial to a dead address does not hold us long.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(claim.future), self._probe_timeout)
            existing = self.links.get(node_id)
            if existing is None or (existing.relayed and not relayed):
                return True
        if not existing.initiated_locally or node_id < self._own_id:
            return True
        # We dialed them before and they are the higher id, so our link should win, unless it
        # is dead and they restarted: ask it.
        alive = await existing.ping(self._probe_timeout)
        return not (alive and self.links.get(node_id) is existing)
