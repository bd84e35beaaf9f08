"""The LAN side: the same signed listing event advertised and found over mDNS/DNS-SD (zeroconf).

Service type `_mesh-llm._udp.local.`; the event's JSON travels in TXT records cut into chunks
(`n` = how many, then `0`, `1`, ...), since one TXT string holds at most 255 bytes. Nothing
leaves the LAN, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time

import psutil
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mesh_llm.discovery._listing import Found
from mesh_llm.discovery._nostr import check_event_json
from mesh_llm.errors import DiscoveryError, ListingError

log = logging.getLogger(__name__)

SERVICE = "_mesh-llm._udp.local."
CHUNK = 240  # bytes of event JSON per TXT string (key and '=' take the rest of the 255)
MAX_CHUNKS = 80


def lan_addresses() -> list[str]:
    """IPv4 addresses of this machine's multicast-capable (non-loopback) interfaces."""
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family != socket.AF_INET:
                continue
            ip = ipaddress.ip_address(a.address)
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                out.append(str(ip))
    return sorted(set(out))


def _properties(event_json: str) -> dict[bytes, bytes]:
    raw = event_json.encode("utf-8")
    chunks = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)]
    props = {b"n": str(len(chunks)).encode()}
    props.update({str(i).encode(): c for i, c in enumerate(chunks)})
    return props


def _assemble(props: dict[bytes, bytes | None]) -> str:
    try:
        n = int((props.get(b"n") or b"").decode())
    except ValueError as exc:
        raise ListingError("LAN listing has no chunk count") from exc
    if not 0 < n <= MAX_CHUNKS:
        raise ListingError("LAN listing has a bad chunk count")
    parts = [props.get(str(i).encode()) for i in range(n)]
    if any(p is None for p in parts):
        raise ListingError("LAN listing is missing chunks")
    try:
        return b"".join(p for p in parts if p is not None).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ListingError("LAN listing is not text") from exc


class LanAdvertiser:
    """Keeps one listing advertised on the LAN; `update()` replaces it, `close()` withdraws it."""

    def __init__(self, instance: str, port: int, timeout_s: float) -> None:
        self.instance = instance
        self.port = port
        self.timeout_s = timeout_s
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    def _info_for(self, event_json: str) -> AsyncServiceInfo:
        addresses = lan_addresses()
        if not addresses:
            raise DiscoveryError("no LAN interface with an IPv4 address to advertise on")
        return AsyncServiceInfo(
            SERVICE,
            f"{self.instance}.{SERVICE}",
            addresses=[socket.inet_aton(a) for a in addresses],
            port=self.port,
            properties=_properties(event_json),
            server=f"{self.instance}.local.",
        )

    async def update(self, event_json: str) -> None:
        """Advertise (or re-advertise) `event_json`; raise DiscoveryError if the LAN cannot be used."""
        info = self._info_for(event_json)
        try:
            if self._zc is None:
                self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
            if self._info is None:
                await asyncio.wait_for(
                    self._zc.async_register_service(info, allow_name_change=True), self.timeout_s + 5
                )
            else:
                info = AsyncServiceInfo(
                    SERVICE, self._info.name, addresses=info.addresses, port=self.port,
                    properties=info.properties, server=self._info.server,
                )  # fmt: skip
                await asyncio.wait_for(self._zc.async_update_service(info), self.timeout_s + 5)
        except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
            raise DiscoveryError(f"cannot advertise on the LAN: {exc or type(exc).__name__}") from exc
        self._info = info

    async def withdraw(self) -> None:
        """Stop advertising (the mesh is delisted) but keep the responder for a later update."""
        if self._zc is not None and self._info is not None:
            info, self._info = self._info, None
            try:
                await asyncio.wait_for(self._zc.async_unregister_service(info), self.timeout_s)
            except (OSError, TimeoutError, RuntimeError) as exc:
                log.debug("mDNS unregister: %s", exc)

    async def close(self) -> None:
        await self.withdraw()
        if self._zc is not None:
            zc, self._zc = self._zc, None
            try:
                await asyncio.wait_for(zc.async_close(), self.timeout_s)
            except (OSError, TimeoutError, RuntimeError) as exc:
                log.debug("mDNS close: %s", exc)

    @property
    def advertised(self) -> bool:
        return self._info is not None


async def browse_lan(wait_s: float) -> tuple[list[Found], list[str]]:
    """Listen `wait_s` for mesh listings on the LAN; return the valid ones and why others were ignored.

    Raises DiscoveryError if mDNS cannot run here (no usable interface).
    """
    if not lan_addresses():
        raise DiscoveryError("no LAN interface with an IPv4 address to listen on")
    names: set[str] = set()

    def seen(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.add(name)

    try:
        zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    except OSError as exc:
        raise DiscoveryError(f"cannot use mDNS on this machine: {exc}") from exc
    found: list[Found] = []
    ignored: list[str] = []
    try:
        browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE], handlers=[seen])
        await asyncio.sleep(wait_s)
        await asyncio.wait_for(browser.async_cancel(), wait_s + 1)
        for name in sorted(names)[:200]:
            info = AsyncServiceInfo(SERVICE, name)
            if not await info.async_request(zc.zeroconf, int(wait_s * 1000)):
                continue
            try:
                text = _assemble(dict(info.properties))
                found.append(check_event_json(text, now=time.time(), source="lan", where=name))
            except ListingError as exc:
                ignored.append(f"{name}: {exc}")
    finally:
        try:
            await asyncio.wait_for(zc.async_close(), wait_s + 1)
        except (OSError, TimeoutError, RuntimeError) as exc:
            log.debug("mDNS close: %s", exc)
    return found, ignored
