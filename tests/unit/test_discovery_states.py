"""Discovery's states: typed records whose text is what status has always shown, one logged transition."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mesh_llm.discovery import Discovery, DiscoveryConfig, DiscoveryTiming, Found, Listing, MeshFacts
from mesh_llm.discovery._states import Discovering, Joining, LookingAgain, Member, Starting
from mesh_llm.peer.token import InviteToken, new_mesh


def found(name: str | None = "Lab", node_count: int = 3, source: str = "lan") -> Found:
    token = new_mesh().invite("cd" * 32, ["127.0.0.1:4000"])
    li = Listing(invite_token=token.encode(), mesh_id=token.mesh_id.hex(), name=name, node_count=node_count)
    return Found(li, "ab" * 32, 0, 120, source, "ws://relay")


def test_each_state_reads_as_status_has_always_shown_it() -> None:
    f = found()
    mesh = f.listing.mesh_id[:8]
    assert Starting().text == "starting"
    assert Discovering().text == "discovering"
    assert Member().text == "member"
    assert LookingAgain(15.0).text == "no mesh found; looking again in 15 s"
    assert Joining.of(f).text == f"joining Lab ({mesh}, 3 node(s), via lan)"
    assert Joining.of(found(name=None, node_count=1, source="nostr")).label.startswith("unnamed (")


class FakeHost:
    """A node that records the discovery state each time it is told something changed."""

    def __init__(self, discovery_of: list[Discovery], *, client: bool, joins: bool) -> None:
        self._of = discovery_of
        self._client = client
        self.joins = joins
        self.seen: list[str] = []
        self.started_own = False
        self.facts: MeshFacts | None = None

    @property
    def is_client(self) -> bool:
        return self._client

    def mesh_facts(self) -> MeshFacts | None:
        return self.facts

    async def join_mesh(self, token: InviteToken, timeout_s: float) -> bool:
        return self.joins

    async def start_own_mesh(self) -> None:
        self.started_own = True

    def discovery_changed(self) -> None:
        self.seen.append(self._of[0].status()["state"])


def make(tmp_path: Path, *, client: bool, joins: bool = True) -> tuple[Discovery, FakeHost]:
    holder: list[Discovery] = []
    host = FakeHost(holder, client=client, joins=joins)
    config = DiscoveryConfig(auto=True, lan=False, timing=DiscoveryTiming(client_retry_s=0.001))
    d = Discovery(config, host, tmp_path, "test")
    holder.append(d)
    return d, host


async def test_a_client_looks_again_until_it_finds_a_mesh_then_joins_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    d, host = make(tmp_path, client=True)
    f = found()
    looks = iter([[], [f]])

    async def look(prefs: object, *, lan_only: bool = False) -> list[Found]:
        return next(looks)

    monkeypatch.setattr(d, "_look", look)
    assert d.status()["state"] == "starting"
    with caplog.at_level(logging.DEBUG, logger="mesh_llm.discovery._service"):
        await d._find()
    joining = Joining.of(f).text
    assert host.seen == [
        "discovering",
        "no mesh found; looking again in 0 s",
        "discovering",
        joining,
        "member",
    ]
    assert d.state == Member() and d.joined is f and d.mesh_name == "Lab"
    assert f"discovery: discovering -> {joining}" in caplog.messages
    assert "discovery: starting -> discovering" in caplog.messages


async def test_a_node_that_finds_nothing_starts_its_own_mesh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, host = make(tmp_path, client=False, joins=False)

    async def look(prefs: object, *, lan_only: bool = False) -> list[Found]:
        return [found()]  # it does not answer

    monkeypatch.setattr(d, "_look", look)
    await d._find()
    assert host.started_own and isinstance(d.state, Member)
    assert host.seen[0] == "discovering" and host.seen[1].startswith("joining Lab (")
    assert host.seen[-1] == "member"


def test_a_move_to_the_same_state_is_no_transition(tmp_path: Path) -> None:
    d, host = make(tmp_path, client=True)
    d._set_state(Member())
    d._set_state(Member())
    assert host.seen == ["member"]


async def test_a_member_whose_switch_fails_is_a_member_again(tmp_path: Path) -> None:
    d, host = make(tmp_path, client=False, joins=False)
    token = new_mesh().invite("cd" * 32, ["127.0.0.1:4000"])
    host.facts = MeshFacts(
        "cd" * 32, token.mesh_id.hex(), token.encode(), 4000, 1, 0, (), (), (), 0, frozenset(), ("cd" * 32,)
    )
    d._set_state(Member())
    assert not await d._try([found()])
    assert host.seen[-2].startswith("joining Lab (") and host.seen[-1] == "member"
