"""Round-trip time to a peer (pure): the latest sample, a smoothed value, a windowed minimum.

Decisions (which workers a split may use) take the minimum over a sliding window, RFC 9002's
min_rtt idea: a busy event loop or one stalled second inflates single samples, but not the
minimum, while a real route change still shows once the window has moved past the old samples.
The smoothed value (EWMA, RFC 6298's alpha) is for display. Before the first sample every figure
is None: unmeasured is not "0 ms", the best possible.
"""

from __future__ import annotations

from collections import deque

DEFAULT_WINDOW_S = 30.0
DEFAULT_ALPHA = 0.125


class RttEstimator:
    """Samples in seconds, on the caller's monotonic clock (`now`)."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, alpha: float = DEFAULT_ALPHA) -> None:
        if not window_s > 0 or not 0 < alpha <= 1:
            raise ValueError("window_s must be positive and alpha in (0, 1]")
        self._window_s = window_s
        self._alpha = alpha
        self.latest: float | None = None
        self.smoothed: float | None = None
        # (time, rtt) with rtt increasing from the left: the left end is the window's minimum.
        self._mins: deque[tuple[float, float]] = deque()

    def sample(self, rtt_s: float, now: float) -> None:
        """Take one round-trip measurement (negative or NaN values are ignored)."""
        if not rtt_s >= 0:
            return
        self.latest = rtt_s
        self.smoothed = (
            rtt_s if self.smoothed is None else self.smoothed + self._alpha * (rtt_s - self.smoothed)
        )
        while self._mins and self._mins[-1][1] >= rtt_s:
            self._mins.pop()
        self._mins.append((now, rtt_s))
        self._expire(now)

    def minimum(self, now: float) -> float | None:
        """The smallest sample of the last window (the latest if all are older), or None."""
        self._expire(now)
        return self._mins[0][1] if self._mins else None

    def _expire(self, now: float) -> None:
        # Keep at least the newest sample: with no fresh ones the last known figure still stands.
        while len(self._mins) > 1 and self._mins[0][0] < now - self._window_s:
            self._mins.popleft()
