"""A connection's states and the transitions between them (pure).

    HANDSHAKING --QUIC+TLS done--> AUTHENTICATING --mesh auth done--> READY
         |                               |                              |
         +-------------------------------+------------> CLOSED <--------+

CLOSED is final; every other move (back, or skipping authentication) is a bug in the caller.
"""

from __future__ import annotations

import enum

from mesh_llm.errors import TransportError


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    CLOSED = "closed"


_NEXT: dict[State, frozenset[State]] = {
    State.HANDSHAKING: frozenset({State.AUTHENTICATING, State.CLOSED}),
    State.AUTHENTICATING: frozenset({State.READY, State.CLOSED}),
    State.READY: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class ImpossibleTransition(TransportError):
    """A connection was asked to move between states that have no edge between them."""


def can_move(old: State, new: State) -> bool:
    """Whether a connection in `old` may move to `new`."""
    return new in _NEXT[old]


def check_transition(old: State, new: State) -> State:
    """`new` if a connection in `old` may move there; ImpossibleTransition otherwise."""
    if not can_move(old, new):
        raise ImpossibleTransition(f"a connection cannot go from {old.value} to {new.value}")
    return new


class ConnectionGone(Exception):
    """Internal: the connection ended while authentication was waiting for the peer."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code
