"""Per-stream credit (pure): how far a peer may send, and when to grant it more.

QUIC's own flow-control window in aioquic grows with what arrives, not with what the
application reads, so mesh streams carry their own credit: a receiver grants `window` bytes
beyond what it has read, in `_credit` messages on the control stream, and a writer never sends
past its credit. A slow reader therefore stalls its writer instead of filling memory.
"""

from __future__ import annotations


class ReceiveCredit:
    """The receiving side: bytes arrived, bytes read, and the limit granted to the peer."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.received = 0
        self.consumed = 0
        self.granted = window

    def arrived(self, n: int) -> bool:
        """Count `n` bytes from the peer; False if they go beyond the credit granted."""
        self.received += n
        return self.received <= self.granted

    def read(self, n: int) -> int | None:
        """Count `n` bytes handed to the application; the new limit to grant, if one is due.

        A new grant goes out when half the window is used up: few credit messages, no stalls.
        """
        self.consumed += n
        if self.granted - self.consumed <= self.window // 2:
            self.granted = self.consumed + self.window
            return self.granted
        return None


class SendCredit:
    """The sending side: the peer's limit and what we have sent towards it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0

    @property
    def room(self) -> int:
        """Bytes that may be sent now."""
        return max(self.limit - self.sent, 0)

    def raise_to(self, limit: int) -> bool:
        """Take a grant from the peer; True if it gave more room (grants never shrink)."""
        if limit > self.limit:
            self.limit = limit
            return True
        return False

    def spend(self, n: int) -> None:
        if n > self.room:
            raise ValueError(f"{n} bytes exceed the {self.room} bytes of credit left")
        self.sent += n
