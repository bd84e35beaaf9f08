"""A connection's states move forward only: handshake, authentication, ready, closed."""

from __future__ import annotations

import itertools

import pytest

from mesh_llm.errors import TransportError
from mesh_llm.transport._state import ImpossibleTransition, State, can_move, check_transition

ALLOWED = {
    (State.HANDSHAKING, State.AUTHENTICATING),
    (State.HANDSHAKING, State.CLOSED),
    (State.AUTHENTICATING, State.READY),
    (State.AUTHENTICATING, State.CLOSED),
    (State.READY, State.CLOSED),
}


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED, key=lambda p: (p[0].value, p[1].value)))
def test_the_forward_transitions_are_allowed(old: State, new: State) -> None:
    assert can_move(old, new)
    assert check_transition(old, new) is new


@pytest.mark.parametrize(
    ("old", "new"),
    [pair for pair in itertools.product(State, State) if pair not in ALLOWED],
)
def test_every_other_transition_is_refused(old: State, new: State) -> None:
    assert not can_move(old, new)
    with pytest.raises(ImpossibleTransition):
        check_transition(old, new)


def test_closed_is_final_and_ready_needs_authentication() -> None:
    assert not any(can_move(State.CLOSED, new) for new in State)
    assert not can_move(State.HANDSHAKING, State.READY)
    assert issubclass(ImpossibleTransition, TransportError)
