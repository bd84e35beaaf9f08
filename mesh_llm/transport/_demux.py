"""A connection's data streams: opening frames, routing stream events, teardown.

Each data stream starts with one frame {"t": "_open", "kind", "header"} (see _streams.py).
The table decodes that frame from a new remote stream, asks its connection for a handler of the
kind, and afterwards routes the stream's data, resets and stop-sendings to its reader or writer.

What a peer makes the table hold is bounded (see TransportConfig): at most
`max_opening_streams` streams whose open frame is incomplete, holding `max_opening_bytes`
together, each for at most `stream_open_timeout` (`expire_opening`, run on the table's own
timer); and at most `max_remote_streams` streams it opened and has not finished. A stream
beyond a bound is refused (REFUSED) and its bytes dropped; every opened stream's own buffer is
bounded by its credit window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from mesh_llm.errors import TransportError, WireError
from mesh_llm.peer.wire import TYPE_FIELD, encode_frame, try_decode_frame
from mesh_llm.transport._codes import StreamCode, code_name
from mesh_llm.transport._config import TransportConfig
from mesh_llm.transport._streams import Stream, StreamHost

log = logging.getLogger("mesh_llm.transport")


class StreamTableHost(StreamHost, Protocol):
    """What the stream table needs of its connection, beyond what a stream needs."""

    dialer: bool
    peer_window: int

    def who(self) -> str: ...
    def stream_handler(self, kind: str) -> Any | None: ...
    def run_stream_handler(self, stream: Stream, handler: Any, header: dict[str, Any]) -> None: ...
    def next_stream_id(self) -> int: ...
    def now(self) -> float:
        """The event loop's clock."""


_SUM_UNREAD_EVERY = 256 << 10  # bytes arrived between sums of the connection's unread bytes


class StreamTable:
    """The open data streams of one connection, by QUIC stream id."""

    def __init__(self, host: StreamTableHost, config: TransportConfig) -> None:
        self._host = host
        self._config = config
        self._window = config.stream_window
        self._max_frame = config.max_frame
        self._streams: dict[int, Stream] = {}
        self._opening: dict[int, bytearray] = {}  # remote streams whose open frame is incomplete
        self._opening_deadline: dict[int, float] = {}
        self._opening_bytes = 0
        self._remote_open = 0  # streams in _streams that the peer opened
        self._timer: asyncio.TimerHandle | None = None  # at the earliest open-frame deadline
        self._fed: dict[int, Stream] = {}  # streams fed during this burst, delivered after it
        self._highest_remote_stream = -1
        self._arrived_unchecked = 0  # bytes arrived since the unread total was last summed

    def get(self, stream_id: int) -> Stream | None:
        return self._streams.get(stream_id)

    def is_remote(self, stream_id: int) -> bool:
        return bool(stream_id & 1) == self._host.dialer  # client-initiated ids are even

    def open(self, kind: str, header: Mapping[str, Any]) -> Stream:
        """A new local stream of `kind`; its open frame is queued at once."""
        frame = encode_frame(
            {TYPE_FIELD: "_open", "kind": kind, "header": dict(header)}, max_frame=self._max_frame
        )
        stream_id = self._host.next_stream_id()
        stream = Stream(self._host, stream_id, kind, self._window, self._host.peer_window)
        self._streams[stream_id] = stream
        self._host.send_stream_data(stream_id, frame)
        return stream

    def __len__(self) -> int:
        """Open data streams, both directions."""
        return len(self._streams)

    def forget(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None and self.is_remote(stream_id):
            self._remote_open -= 1

    @property
    def counts(self) -> tuple[int, int, int]:
        """(streams whose open frame is incomplete, their bytes, open streams the peer opened)."""
        return len(self._opening), self._opening_bytes, self._remote_open

    def expire_opening(self, now: float) -> float | None:
        """Refuse the streams whose open frame is overdue; the next deadline, if any remain."""
        for stream_id, deadline in list(self._opening_deadline.items()):
            if deadline <= now:
                self._drop_opening(stream_id)
                log.info("reset stream %d from %s: no open frame within %g s",
                         stream_id, self._host.who(), self._config.stream_open_timeout)  # fmt: skip
                self.refuse(stream_id, StreamCode.REFUSED)
        return min(self._opening_deadline.values(), default=None)

    def _wake_at(self, when: float) -> None:
        if self._timer is not None and self._timer.when() <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        after = self.expire_opening(self._host.now())
        if after is not None:
            self._wake_at(after)

    def fail_all(self, exc: TransportError) -> None:
        """The connection ended: fail every stream with `exc` and forget them."""
        for stream in list(self._streams.values()):
            stream.reader.fail(exc)
            stream.writer.fail(exc)
        self._streams.clear()
        self._remote_open = 0
        self._opening.clear()
        self._opening_deadline.clear()
        self._opening_bytes = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def deliver_fed(self) -> None:
        fed, self._fed = self._fed, {}
        for stream in fed.values():
            stream.reader.deliver()

    # --- events of an authenticated connection ----------------------------------------------

    def on_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            if data:
                stream.reader.feed_data(data, deliver=False)
                self._fed[stream_id] = stream
                self._arrived_unchecked += len(data)
                if self._arrived_unchecked >= _SUM_UNREAD_EVERY:
                    self._bound_unread()
            if end_stream:
                stream.reader.feed_eof()
        elif stream_id in self._opening or (
            self.is_remote(stream_id) and stream_id > self._highest_remote_stream
        ):
            self._on_opening_data(stream_id, data, end_stream)
        # else: late data for a stream we already finished with or reset; drop it.

    def _bound_unread(self) -> None:
        """Keep what the peer's streams hold unread within the connection's bound: each stream
        may hold a window, but not every stream at once (a peer could open 1024 and fill them).
        Beyond the bound, the fullest streams are reset; the link goes on."""
        self._arrived_unchecked = 0
        streams = [s for s in self._streams.values() if s.reader.unread]
        total = sum(s.reader.unread for s in streams)
        for stream in sorted(streams, key=lambda s: s.reader.unread, reverse=True):
            if total <= self._config.max_connection_unread:
                return
            total -= stream.reader.unread
            log.info(
                "reset stream %r from %s: its connection holds too much unread", stream.kind, self._host.who()
            )
            stream.abort(StreamCode.FLOW_CONTROL, "the connection's unread bytes passed their bound")

    def on_reset(self, stream_id: int, error_code: int) -> None:
        self._drop_opening(stream_id)
        stream = self._streams.get(stream_id)
        if stream is not None:
            reason = code_name(StreamCode, error_code)
            stream.reader.fail(
                TransportError(f"{self._host.who()} reset its side of stream {stream.kind!r} ({reason})")
            )

    def on_stop_sending(self, stream_id: int, error_code: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            reason = code_name(StreamCode, error_code)
            stream.writer.fail(
                TransportError(f"{self._host.who()} stopped reading stream {stream.kind!r} ({reason})")
            )

    def refuse(self, stream_id: int, code: StreamCode) -> None:
        self._host.reset_stream(stream_id, code)
        self._host.stop_stream(stream_id, code)

    def _drop_opening(self, stream_id: int) -> None:
        buffer = self._opening.pop(stream_id, None)
        if buffer is not None:
            self._opening_bytes -= len(buffer)
            del self._opening_deadline[stream_id]

    def _on_opening_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self._highest_remote_stream = max(self._highest_remote_stream, stream_id)
        config = self._config
        buffer = self._opening.get(stream_id)
        if buffer is None:
            if (
                len(self._opening) >= config.max_opening_streams
                or self._remote_open >= config.max_remote_streams
            ):
                log.info(
                    "refused stream %d from %s: too many streams open or opening", stream_id, self._host.who()
                )
                self.refuse(stream_id, StreamCode.REFUSED)
                return
            buffer = self._opening[stream_id] = bytearray()
            deadline = self._opening_deadline[stream_id] = self._host.now() + config.stream_open_timeout
            self._wake_at(deadline)
        if self._opening_bytes + len(data) > config.max_opening_bytes:
            self._drop_opening(stream_id)
            log.info("refused stream %d from %s: open frames over %d bytes together",
                     stream_id, self._host.who(), config.max_opening_bytes)  # fmt: skip
            self.refuse(stream_id, StreamCode.REFUSED)
            return
        buffer += data
        self._opening_bytes += len(data)
        try:
            decoded = try_decode_frame(buffer, self._max_frame)
        except WireError as exc:
            self._drop_opening(stream_id)
            log.warning("reset stream %d from %s: bad open frame: %s", stream_id, self._host.who(), exc)
            self.refuse(stream_id, StreamCode.PROTOCOL_ERROR)
            return
        if decoded is None:
            if end_stream:
                self._drop_opening(stream_id)
                self.refuse(stream_id, StreamCode.PROTOCOL_ERROR)
            return
        msg, used = decoded
        rest = bytes(buffer[used:])
        self._drop_opening(stream_id)
        kind, header = msg.get("kind"), msg.get("header", {})
        if msg[TYPE_FIELD] != "_open" or not isinstance(kind, str) or not isinstance(header, dict):
            self.refuse(stream_id, StreamCode.PROTOCOL_ERROR)
            return
        handler = self._host.stream_handler(kind)
        if handler is None:
            log.info("reset stream of unknown kind %r from %s", kind, self._host.who())
            self.refuse(stream_id, StreamCode.UNKNOWN_KIND)
            return
        stream = Stream(self._host, stream_id, kind, self._window, self._host.peer_window)
        self._streams[stream_id] = stream
        self._remote_open += 1
        if rest:
            stream.reader.feed_data(rest)
        if end_stream:
            stream.reader.feed_eof()
        self._host.run_stream_handler(stream, handler, header)
