"""Discovery as the node runs it: find a mesh, publish ours, converge, rediscover, take over.

The node is seen through `DiscoveryHost`, a narrow protocol: a frozen `MeshFacts` snapshot
in, and three actions out (join a mesh by token, start our own, say something changed). All
decisions come from the pure `_scoring` module; this file only sequences them and carries out
the network calls, each with its deadline (`_publisher` owns the listing itself). What it is
doing is a `_states` record, changed only through `Discovery._set_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from mesh_llm.discovery._config import DiscoveryConfig
from mesh_llm.discovery._host import DiscoveryHost, MeshFacts
from mesh_llm.discovery._listing import Found
from mesh_llm.discovery._look import Discovered, discover
from mesh_llm.discovery._nostr import NostrRelays
from mesh_llm.discovery._publisher import Notices, Publisher
from mesh_llm.discovery._scoring import Preferences, rank, should_move
from mesh_llm.discovery._states import (
    Discovering,
    DiscoveryState,
    Joining,
    LookingAgain,
    Member,
    Starting,
)
from mesh_llm.errors import DiscoveryError

log = logging.getLogger(__name__)

LAST_MESH_FILE = "last-mesh"


class Discovery:
    """Runs alongside the node: `await run()` until cancelled, then `await stop()`."""

    def __init__(self, config: DiscoveryConfig, host: DiscoveryHost, state_dir: Path, version: str) -> None:
        self.config = config
        self.timing = config.timing
        self.host = host
        self.state_dir = state_dir
        self.version = version
        self.publishing = config.publish or (config.mesh_name is not None and not host.is_client)
        self.mesh_name = config.mesh_name
        self.relays = NostrRelays(config.relays, None, self.timing.relay_timeout_s)
        self.notices = Notices()
        self.pub = Publisher(config, self.relays, state_dir, version, self.notices)
        self.state: DiscoveryState = Starting()
        self.joined: Found | None = None
        self.took_over = False
        self._alone_since: float | None = None
        self._missing_since: float | None = None
        self._due: dict[str, float] = {}

    def _set_state(self, new: DiscoveryState) -> None:
        """The one transition: log old -> new, and tell the node (its console shows the state)."""
        if new == self.state:
            return
        log.debug("discovery: %s -> %s", self.state.text, new.text)
        self.state = new
        self.host.discovery_changed()

    # ---- what the console shows ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Whether and where the mesh is published, its listing, and what discovery is doing."""
        pub = self.pub
        return {
            "state": self.state.text,
            "publishing": self.publishing,
            "published": pub.published,
            "public": self.publishing,
            "relays": [
                {
                    "url": url,
                    "ok": pub.report is not None and url in pub.report.ok,
                    "error": pub.report.failed.get(url) if pub.report is not None else None,
                }
                for url in self.config.relays
            ],
            "lan": {
                "enabled": self.config.lan,
                "advertised": pub.lan is not None and pub.lan.advertised,
                "error": pub.lan_error,
            },
            "listing": self._listing_dict(),
            "published_at": pub.published_at,
            "delisted": pub.delisted,
            "error": self.notices.error,
            "mesh_name": self.mesh_name,
            "region": self.config.region,
            "max_clients": self.config.max_clients,
            "auto": self.config.finds,
            "took_over": self.took_over,
            "joined": None
            if self.joined is None
            else {
                "mesh_id": self.joined.listing.mesh_id,
                "name": self.joined.listing.name,
                "source": self.joined.source,
                "where": self.joined.where,
            },
        }

    def _listing_dict(self) -> dict[str, Any] | None:
        if self.pub.listing is None:
            return None
        import json

        data: dict[str, Any] = json.loads(self.pub.listing.to_json())
        return data

    # ---- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Find a mesh first if asked to, then keep publishing and watching."""
        if self.config.finds and self.host.mesh_facts() is None:
            await self._find()
        self._set_state(Member())
        tick = min(1.0, self.timing.publish_interval_s / 4)
        while True:
            await self._tick(time.monotonic())
            await asyncio.sleep(tick)

    @property
    def _delist_s(self) -> float:
        """How long leaving may spend delisting: a relay connect and a send."""
        return 2 * self.timing.relay_timeout_s + 1

    @property
    def stop_s(self) -> float:
        """The longest `stop()` takes: the delisting, then the closes (each one relay timeout) at once."""
        return self._delist_s + self.timing.relay_timeout_s

    async def stop(self) -> None:
        """Take our listing down (so nobody dials a node that left) and close relays and mDNS."""
        with contextlib.suppress(DiscoveryError, TimeoutError):
            await asyncio.wait_for(self._delist(None), self._delist_s)
        await asyncio.gather(self.pub.close(), self.relays.close())

    # ---- finding -----------------------------------------------------------------------

    def _prefs(self, own_mesh_id: str | None = None) -> Preferences:
        return Preferences(
            client=self.host.is_client,
            mesh_name=self.mesh_name if self.config.mesh_name else None,
            region=self.config.region,
            last_mesh_id=self._last_mesh_id(),
            own_mesh_id=own_mesh_id,
        )

    async def _look(self, prefs: Preferences, *, lan_only: bool = False) -> list[Found]:
        """Candidates ranked best first: the LAN's if it has any, else the relays'."""
        lan_wait = self.timing.lan_wait_s if self.config.lan else None
        if lan_wait is not None:
            seen = await discover(None, lan_wait_s=lan_wait, nostr=False)
            self._note_errors(seen)
            ranked = rank(seen.found, prefs)
            if ranked or lan_only:
                return ranked
        seen = await discover(self.relays, lan_wait_s=None)
        self._note_errors(seen)
        return rank(seen.found, prefs)

    def _note_errors(self, seen: Discovered) -> None:
        for why in seen.ignored:
            log.info("ignoring a mesh listing: %s", why)
        for err in seen.errors:
            if err.startswith("LAN"):
                log.debug("%s", err)
            else:
                self.notices.error = err
                self.notices.warn_once(
                    err, f"{err}; discovery goes on with the LAN and the relays that answer"
                )

    async def _try(self, candidates: list[Found]) -> bool:
        for f in candidates:
            joining = Joining.of(f)
            log.info("joining mesh %s", joining.label)
            self._set_state(joining)
            if await self.host.join_mesh(f.listing.token, self.timing.join_timeout_s):
                self.joined = f
                if self.mesh_name is None and f.listing.name:
                    self.mesh_name = f.listing.name
                self._save_last_mesh(f.listing.mesh_id)
                self._set_state(Member())
                return True
            log.warning(
                "mesh %s did not answer within %.0f s; trying the next",
                joining.label, self.timing.join_timeout_s,
            )  # fmt: skip
        if candidates and self.host.mesh_facts() is not None:
            self._set_state(Member())  # a failed switch leaves the node in the mesh it was in
        return False

    async def _find(self) -> None:
        """Join the best mesh found; else start our own (or, as a client, look again every 15 s)."""
        while True:
            self._set_state(Discovering())
            candidates = await self._look(self._prefs())
            if await self._try(candidates):
                return
            if not self.host.is_client:
                what = f"named {self.mesh_name!r}" if self.config.mesh_name else "to join"
                log.info("no mesh %s found: starting our own", what)
                await self.host.start_own_mesh()
                self._set_state(Member())
                return
            log.info("no mesh found; looking again in %.0f s", self.timing.client_retry_s)
            self._set_state(LookingAgain(self.timing.client_retry_s))
            await asyncio.sleep(self.timing.client_retry_s)

    # ---- the periodic work -------------------------------------------------------------

    def _due_now(self, what: str, now: float, period: float) -> bool:
        if now < self._due.get(what, 0.0):
            return False
        self._due[what] = now + period
        return True

    async def _tick(self, now: float) -> None:
        facts = self.host.mesh_facts()
        if facts is None:
            if self.config.finds:
                await self._find()
            return
        if self.config.finds and await self._rediscover_if_alone(facts, now):
            return
        if (
            self.publishing
            and self.config.mesh_name
            and self._due_now("converge", now, self.timing.converge_s)
            and await self._converge(facts)
        ):
            return
        if self.publishing and self._due_now("publish", now, self.timing.publish_interval_s):
            await self._publish(facts)
        elif (
            not self.publishing
            and self.joined is not None  # only a mesh found published: never list one of our own unasked
            and self.joined.listing.mesh_id == facts.mesh_id
            and not self.host.is_client
            and self._due_now("takeover", now, self.timing.takeover_s)
        ):
            await self._maybe_take_over(facts, now)

    async def _rediscover_if_alone(self, facts: MeshFacts, now: float) -> bool:
        if facts.peers:
            self._alone_since = None
            return False
        if self._alone_since is None:
            self._alone_since = now
        if now - self._alone_since < self.timing.alone_s:
            return False
        self._alone_since = now  # wait a full period before the next look
        log.info("alone in the mesh for %.0f s: looking for another", self.timing.alone_s)
        candidates = [
            f
            for f in await self._look(self._prefs(own_mesh_id=facts.mesh_id))
            if self.host.is_client or should_move(facts.mesh_id, facts.node_count, f.listing)
        ]
        if not candidates:
            return False
        await self._delist(None)
        if await self._try(candidates):
            self._due.pop("publish", None)
            return True
        return False

    async def _converge(self, facts: MeshFacts) -> bool:
        """Of two meshes with our name, the smaller joins the larger."""
        seen = await discover(self.relays, lan_wait_s=self.timing.lan_wait_s if self.config.lan else None)
        self._note_errors(seen)
        larger = [
            f
            for f in rank(seen.found, self._prefs(own_mesh_id=facts.mesh_id))
            if should_move(facts.mesh_id, facts.node_count, f.listing)
        ]
        if not larger:
            return False
        best = larger[0].listing
        log.info(
            "mesh %r also runs as %s with %d node(s), we have %d: moving there",
            self.mesh_name, best.mesh_id[:8], best.node_count, facts.node_count,
        )  # fmt: skip
        await self._delist(None)
        if not await self._try(larger):
            log.warning("could not reach the larger mesh; staying in ours")
        self._due.pop("publish", None)  # list the mesh we are in now, at once
        return True

    async def _maybe_take_over(self, facts: MeshFacts, now: float) -> None:
        """Publish the mesh ourselves when nobody still in it lists it.

        A listing counts only if its inviting node is still a live member, so a publisher
        that was killed stops counting at once, not when its listing expires. Members take
        over in node-id order, one takeover period apart, so one of them does it, not all.
        """
        seen = await discover(self.relays, lan_wait_s=self.timing.lan_wait_s if self.config.lan else None)
        if any(not e.startswith("LAN") for e in seen.errors) and not seen.found:
            return  # the relays cannot tell us; do not guess
        live = [
            f
            for f in seen.found
            if f.listing.mesh_id == facts.mesh_id
            and f.listing.token.node_id in (facts.peers | {facts.node_id})
        ]
        ours = [f for f in seen.found if f.listing.mesh_id == facts.mesh_id and f.listing.name]
        if ours and self.mesh_name is None:
            self.mesh_name = ours[0].listing.name
        if live:
            self._missing_since = None
            return
        if self._missing_since is None:
            self._missing_since = now
        order = sorted(facts.members).index(facts.node_id) if facts.node_id in facts.members else 0
        if now - self._missing_since + 1e-9 < order * self.timing.takeover_s:
            return
        log.info("nobody in the mesh lists it any more: taking over publishing")
        self.publishing = True
        self.took_over = True
        self._due.pop("publish", None)
        await self._publish(facts)

    # ---- publishing --------------------------------------------------------------------

    async def _publish(self, facts: MeshFacts) -> None:
        await self.pub.publish(facts, self.mesh_name)
        self.host.discovery_changed()

    async def _delist(self, reason: str | None) -> None:
        """Take our listing down from the relays and the LAN (reason None: we are leaving)."""
        await self.pub.delist(reason)
        self.host.discovery_changed()

    # ---- the last mesh joined ----------------------------------------------------------

    def _last_mesh_id(self) -> str | None:
        try:
            text = (self.state_dir / LAST_MESH_FILE).read_text().strip()
        except OSError:
            return None
        return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else None

    def _save_last_mesh(self, mesh_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.state_dir / LAST_MESH_FILE).write_text(mesh_id + "\n")


__all__ = ["Discovery"]
