"""Stream credit accounting: the peer never sends past its grant; grants follow reading."""

from __future__ import annotations

import pytest

from mesh_llm.transport._credit import ReceiveCredit, SendCredit


def test_a_new_grant_is_due_once_half_the_window_has_been_read() -> None:
    credit = ReceiveCredit(1000)
    assert credit.arrived(1000)
    assert credit.read(400) is None
    assert credit.read(100) == 1500  # half read: grant one window beyond what was read
    assert credit.arrived(500) and not credit.arrived(1)


def test_sending_stops_at_the_limit_and_resumes_with_a_grant() -> None:
    credit = SendCredit(100)
    credit.spend(100)
    assert credit.room == 0
    with pytest.raises(ValueError):
        credit.spend(1)
    assert not credit.raise_to(50)  # grants never shrink
    assert credit.raise_to(250) and credit.room == 150
