"""Who may talk to the node's HTTP servers, checked once in front of each app (ASGI).

* **Host**: the `Host` header must name this node (localhost, 127.0.0.1, [::1], an address it
  listens on, or an `--allow-host` name). A DNS-rebinding page reaches us under its own name,
  so it is refused before any route runs.
* **Key**: with an API key set, every route but the console's static assets needs it, from
  every address: `Authorization: Bearer KEY`, or the console's session cookie, which the page
  gets by posting the key to `/api/login` (HMAC of the key: nothing to store, and a rotated
  key ends every session).
* **Same origin for changes**: a POST must be `application/json` (other sites' pages cannot
  send that without a CORS preflight, which we never answer) and may not carry a foreign
  `Origin`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mesh_llm.api.auth import bearer_matches

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "mesh_llm_session"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def session_value(api_key: str) -> str:
    """The console session cookie for `api_key`."""
    return hmac.new(api_key.encode(), b"mesh-llm console session", hashlib.sha256).hexdigest()


def host_name(header: str) -> str:
    """The host part of a Host header, lowercased, brackets and port removed."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


@dataclass(frozen=True)
class AccessPolicy:
    """What one HTTP server accepts. `public` lists paths that need no key (static assets)."""

    api_key: str | None = None
    allowed_hosts: frozenset[str] = LOOPBACK_NAMES
    public: tuple[str, ...] = ()
    public_prefixes: tuple[str, ...] = ()
    extra_open: frozenset[str] = field(default_factory=frozenset)  # paths that check the key themselves
    json_only: bool = True  # POSTs must be same-origin application/json (the console); not the API
    max_body: int | None = 1024 * 1024  # bodies read here first, up to this (413 beyond); None: the app's job

    def host_allowed(self, header: str) -> bool:
        name = host_name(header)
        if name in self.allowed_hosts:
            return True
        return is_loopback(name)

    def authenticated(self, headers: dict[str, str]) -> bool:
        """Whether the request carries the key (always true when no key is set)."""
        if self.api_key is None:
            return True
        if bearer_matches(headers.get("authorization", ""), self.api_key):
            return True
        return hmac.compare_digest(
            _cookie(headers.get("cookie", ""), SESSION_COOKIE), session_value(self.api_key)
        )

    def needs_key(self, path: str) -> bool:
        return not (path in self.public or path.startswith(self.public_prefixes) or path in self.extra_open)


def is_loopback(address: str) -> bool:
    """Whether a literal address is this machine: 127.0.0.0/8, ::1, and ::ffff:127.x (dual-stack)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def allowed_hosts(bound: Iterable[str], extra: Iterable[str] = ()) -> frozenset[str]:
    """Loopback names, the addresses we listen on (every local address for 0.0.0.0/::), and extras."""
    names = set(LOOPBACK_NAMES)
    for host in bound:
        if host in ("0.0.0.0", "::", ""):
            names |= _local_addresses()
        else:
            names.add(host.lower())
    names |= {host_name(h) for h in extra if h.strip()}
    return frozenset(names)


def _local_addresses() -> set[str]:
    import psutil

    return {a.address.split("%")[0].lower() for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family.name in ("AF_INET", "AF_INET6")}  # fmt: skip


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def _header_map(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _refuse(
    send: Send, status: int, message: str, code: str, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes `limit` bytes (or the client left)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then whatever comes next: the disconnect

    return replay


def guarded(app: ASGIApp, policy: AccessPolicy) -> ASGIApp:
    """Wrap an ASGI app with the policy's Host, key and same-origin checks."""

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: nothing here speaks them
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        headers = _header_map(scope)
        if not policy.host_allowed(headers.get("host", "")):
            await _refuse(
                send, 421, "This server does not answer for that host name (Host header).", "host_not_allowed"
            )
            return
        if policy.json_only and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            if not headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
                await _refuse(
                    send, 415, "Send requests with a body as application/json.", "unsupported_media_type"
                )
                return
            origin = headers.get("origin")
            if origin is not None and (
                origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower()
            ):
                await _refuse(send, 403, "Cross-origin requests are refused.", "forbidden_origin")
                return
        if policy.needs_key(scope["path"]) and not policy.authenticated(headers):
            await _refuse(
                send, 401, "Missing or wrong API key. Send it as 'Authorization: Bearer <key>'.", "invalid_api_key",
                ((b"www-authenticate", b"Bearer"),),
            )  # fmt: skip
            return
        if policy.max_body is not None and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            body = await _read_body(receive, policy.max_body)
            if body is None:
                await _refuse(
                    send,
                    413,
                    f"The request body is over the limit of {policy.max_body} bytes.",
                    "request_too_large",
                )
                return
            receive = _replay(body, receive)
        await app(scope, receive, send)

    return guard
