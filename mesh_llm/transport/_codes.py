"""The application error codes of mesh connections and streams."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Application error codes a mesh connection is closed with (RFC 9000 CONNECTION_CLOSE)."""

    GOODBYE = 0x0
    AUTH_FAILED = 0x4D01
    WRONG_MESH = 0x4D02
    AUTH_TIMEOUT = 0x4D03
    DUPLICATE = 0x4D04
    PROTOCOL_ERROR = 0x4D05
    SHUTDOWN = 0x4D06
    STALLED = 0x4D07  # the peer left our control messages unread beyond the bound


class StreamCode(enum.IntEnum):
    """Application error codes a single stream is reset or stopped with."""

    CANCELLED = 0x10
    UNKNOWN_KIND = 0x11
    REFUSED = 0x12
    FLOW_CONTROL = 0x13
    NOT_AUTHENTICATED = 0x14
    PROTOCOL_ERROR = 0x15
    HANDLER_FAILED = 0x16


def code_name(enum_type: type[enum.IntEnum], code: int) -> str:
    """'auth failed' for CloseCode.AUTH_FAILED; 'code 0x1234' for a code we do not know."""
    try:
        return enum_type(code).name.lower().replace("_", " ")
    except ValueError:
        return f"code {code:#x}"


def termination_reason(
    error_code: int, frame_type: int | None, reason_phrase: str, idle_timeout: float
) -> str:
    """Why a connection ended that this end did not close: the peer closed it, or the engine did."""
    if frame_type is None:  # the peer's application closed it
        reason = f"peer closed the connection ({code_name(CloseCode, error_code)})"
        if reason_phrase and reason_phrase != code_name(CloseCode, error_code):
            reason += f": {reason_phrase}"
        return reason
    if str(reason_phrase).lower() == "idle timeout":
        return f"no answer for {idle_timeout:g} s (idle timeout)"
    return f"QUIC error {error_code:#x}: {reason_phrase or 'no reason'}"
