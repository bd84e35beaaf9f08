"""Framing for control streams: 4-byte big-endian length, then a JSON object with a "t" field.

Messages are plain dicts so a frame can be read in a packet capture or a log line. The "t"
field names the message type; receivers ignore fields they do not know, so old and new nodes
interoperate. Types starting with "_" are reserved for the transport itself (authentication,
pings, flow-control credit) and never reach the application.

`FrameDecoder` takes bytes in any split (one byte at a time, or many frames at once) and raises a
typed `WireError` for anything it cannot accept: `FrameTooLarge` as soon as a header announces
an oversized frame, before the body arrives, and `MalformedFrame` for a body that is not a JSON
object with a string "t". After an error the decoder is poisoned, because the byte stream has
lost its framing and nothing after the bad frame can be trusted.

Pure: no I/O.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from mesh_llm.errors import FrameTooLarge, MalformedFrame, WireError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "TYPE_FIELD",
    "FrameDecoder",
    "encode_frame",
    "try_decode_frame",
]

TYPE_FIELD = "t"
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: far above any control message, far below a memory problem
_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


def encode_frame(msg: Mapping[str, Any], *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode one message as a frame; raise MalformedFrame or FrameTooLarge if it cannot be sent."""
    if not isinstance(msg, Mapping):
        raise MalformedFrame(f"a message is a dict, not {type(msg).__name__}")
    if not isinstance(msg.get(TYPE_FIELD), str):
        raise MalformedFrame(f"a message needs a string {TYPE_FIELD!r} field")
    try:
        # Compact separators keep gossip small; allow_nan=False because NaN is not JSON and a
        # strict peer would reject it.
        payload = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise MalformedFrame(f"message of type {msg.get(TYPE_FIELD)!r} cannot be encoded: {exc}") from exc
    if len(payload) > max_frame:
        raise FrameTooLarge(
            f"message of type {msg[TYPE_FIELD]!r} is {len(payload)} bytes; the limit is {max_frame}"
        )
    return _HEADER.pack(len(payload)) + payload


def try_decode_frame(buffer: bytes | bytearray, max_frame: int) -> tuple[dict[str, Any], int] | None:
    """Decode the frame at the start of `buffer`: (message, bytes used), or None if incomplete.

    Raises FrameTooLarge as soon as the header is complete and announces more than `max_frame`,
    and MalformedFrame if the complete body is not a JSON object with a string "t".
    """
    return _decode_at(buffer, 0, max_frame)


def _decode_at(buffer: bytes | bytearray, offset: int, max_frame: int) -> tuple[dict[str, Any], int] | None:
    # Works on an offset rather than a slice so that draining many frames stays linear.
    if len(buffer) - offset < HEADER_SIZE:
        return None
    (length,) = _HEADER.unpack_from(buffer, offset)
    if length > max_frame:
        raise FrameTooLarge(f"peer announced a {length}-byte frame; the limit is {max_frame}")
    start = offset + HEADER_SIZE
    end = start + length
    if len(buffer) < end:
        return None
    return _decode_payload(bytes(buffer[start:end])), end - offset


def _no_constants(name: str) -> Any:
    # JSON has no NaN or Infinity; Python's decoder accepts them, and int(inf) raises
    # OverflowError wherever a peer's number is used. Refuse them at the door.
    raise ValueError(f"{name} is not JSON")


def _decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers too long to convert; RecursionError
        # covers absurdly nested arrays.
        raise MalformedFrame(f"frame is not UTF-8 JSON: {exc}") from exc
    if not isinstance(msg, dict):
        raise MalformedFrame(f"frame holds a JSON {type(msg).__name__}, not an object")
    if not isinstance(msg.get(TYPE_FIELD), str):
        raise MalformedFrame(f"frame has no string {TYPE_FIELD!r} field")
    return msg


class FrameDecoder:
    """Turns a byte stream split anywhere into messages; poisoned after the first error."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._error: WireError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        """True once the decoder has raised; it will raise again on every feed."""
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
        """Add bytes; return every message they complete, in order."""
        if self._error is not None:
            raise type(self._error)(f"decoder already failed: {self._error}")
        self._buffer += data
        messages: list[dict[str, Any]] = []
        offset = 0
        try:
            while True:
                decoded = _decode_at(self._buffer, offset, self.max_frame)
                if decoded is None:
                    break
                msg, used = decoded
                messages.append(msg)
                offset += used
        except WireError as exc:
            self._error = exc
            self._buffer.clear()
            raise
        finally:
            if offset and self._error is None:
                del self._buffer[:offset]
        return messages
