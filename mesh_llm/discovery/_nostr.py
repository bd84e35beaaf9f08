"""Nostr relays through nostr-sdk: publish, delist and fetch mesh listings, each with a deadline.

This is the one seam where nostr-sdk's errors become DiscoveryError. Relays that do not answer
are reported by address; nothing here waits without a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import nostr_sdk as ns

from mesh_llm.discovery._listing import LISTING_KIND, LISTING_TAG, Found, Listing, listing_from_event
from mesh_llm.errors import ConfigError, DiscoveryError, ListingError

log = logging.getLogger(__name__)
T = TypeVar("T")

KEY_FILE = "nostr.nsec"


def load_or_create_keys(state_dir: Path) -> ns.Keys:
    """This node's Nostr signing key, kept as bech32 `nsec` in the state dir (mode 0600)."""
    path = state_dir / KEY_FILE
    if path.is_file():
        try:
            return ns.Keys.parse(path.read_text().strip())
        except Exception as exc:  # nostr-sdk raises its own error types
            raise ConfigError(
                f"{path} is not a Nostr secret key ({exc}); remove it to make a new one"
            ) from exc
    keys = ns.Keys.generate()
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keys.secret_key().to_bech32() + "\n")
    os.replace(tmp, path)
    return keys


def signed_listing(listing: Listing, keys: ns.Keys, ttl_s: float) -> ns.Event:
    """The listing as a signed, replaceable kind-31990 event that expires after `ttl_s`."""
    expires = ns.Timestamp.from_secs(int(time.time() + ttl_s))
    tags = [ns.Tag.identifier(LISTING_TAG), ns.Tag.custom("k", [LISTING_TAG]), ns.Tag.expiration(expires)]
    return ns.EventBuilder(ns.Kind(LISTING_KIND), listing.to_json()).tags(tags).finalize(keys)


def check_event_json(text: str, *, now: float, source: str, where: str) -> Found:
    """Verify a listing event given as JSON text (id and Schnorr signature), then check it."""
    try:
        event = ns.Event.from_json(text)
        ok = bool(event.verify())
    except Exception as exc:
        raise ListingError(f"not a Nostr event: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ListingError(f"not JSON: {exc}") from exc
    return listing_from_event(data, signature_ok=ok, now=now, source=source, where=where)


@dataclass
class RelayReport:
    """What the relays said to the last call."""

    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return "; ".join(f"{url}: {why}" for url, why in sorted(self.failed.items()))


class NostrRelays:
    """A connected nostr-sdk client for a fixed set of relays. `close()` when done."""

    def __init__(self, relays: tuple[str, ...], keys: ns.Keys | None, timeout_s: float) -> None:
        self.relays = relays
        self.keys = keys
        self.timeout_s = timeout_s
        self._client: ns.Client | None = None
        self._bad: dict[str, str] = {}

    async def _connected(self) -> ns.Client:
        if self._client is None:
            client = ns.Client()
            for url in self.relays:
                try:
                    await client.add_relay(ns.RelayUrl.parse(url))
                except Exception as exc:
                    self._bad[url] = f"not a usable relay address ({exc})"
            self._client = client
        await _deadline(
            self._client.connect(timedelta(seconds=self.timeout_s)), self.timeout_s + 1, "connect"
        )
        return self._client

    async def _statuses(self, client: ns.Client) -> dict[str, str]:
        """Relays that are not connected now, with their state."""
        out = dict(self._bad)
        relays = await _deadline(client.relays(), self.timeout_s, "list relays")
        for url, relay in relays.items():
            status = relay.status()
            if status != ns.RelayStatus.CONNECTED:
                out[str(url)] = f"not connected ({str(status).rsplit('.', 1)[-1].lower()})"
        return out

    async def publish(self, event: ns.Event) -> RelayReport:
        """Send an event to every relay; report which took it."""
        client = await self._connected()
        out = await _deadline(
            client.send_event(event, ok_timeout=timedelta(seconds=self.timeout_s)),
            self.timeout_s + 1,
            "publish",
        )
        report = RelayReport([str(u) for u in out.success], {str(u): str(e) for u, e in out.failed.items()})
        report.failed.update(self._bad)
        return report

    async def delist(self, event_id: ns.EventId) -> RelayReport:
        """Ask the relays to delete one of our listings (NIP-09, by event id)."""
        assert self.keys is not None
        tags = [ns.Tag.parse(["e", event_id.to_hex()]), ns.Tag.parse(["k", str(LISTING_KIND)])]
        return await self.publish(ns.EventBuilder(ns.Kind(5), "").tags(tags).finalize(self.keys))

    async def fetch(self, now: float | None = None) -> tuple[list[Found], RelayReport, list[str]]:
        """Every valid listing the relays hold; the relay report; why the others were ignored.

        Raises DiscoveryError when no relay answered at all.
        """
        client = await self._connected()
        flt = (
            ns.Filter()
            .kind(ns.Kind(LISTING_KIND))
            .custom_tag(ns.SingleLetterTag.from_byte(ord("k")), LISTING_TAG)
            .limit(500)
        )
        events = await _deadline(
            client.fetch_events(ns.ReqTarget.auto([flt]), timedelta(seconds=self.timeout_s)),
            self.timeout_s + 1,
            "fetch",
        )
        failed = await self._statuses(client)
        report = RelayReport([u for u in self.relays if u not in failed], failed)
        if not report.ok:
            raise DiscoveryError(f"no Nostr relay answered ({report.describe()})")
        found: list[Found] = []
        ignored: list[str] = []
        moment = time.time() if now is None else now
        for event in events:
            try:
                found.append(
                    check_event_json(event.as_json(), now=moment, source="nostr", where=_relay_of(report))
                )
            except ListingError as exc:
                ignored.append(str(exc))
        return found, report, ignored

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await asyncio.wait_for(client.shutdown(), self.timeout_s)
            except Exception as exc:
                log.debug("nostr client shutdown: %s", exc)


def _relay_of(report: RelayReport) -> str:
    return report.ok[0] if len(report.ok) == 1 else ", ".join(report.ok)


async def _deadline(awaitable: Awaitable[T], timeout_s: float, what: str) -> T:
    """Await with a deadline; nostr-sdk's own errors and the timeout become DiscoveryError."""
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: a cancel never goes unnoticed
            return await awaitable
    except TimeoutError as exc:
        raise DiscoveryError(f"Nostr {what} did not finish within {timeout_s:.0f} s") from exc
    except DiscoveryError:
        raise
    except Exception as exc:
        raise DiscoveryError(f"Nostr {what} failed: {exc}") from exc
