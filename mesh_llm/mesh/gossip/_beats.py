"""Signed heartbeats: this node's own, and the relayed ones it checks before believing them.

A relay's word on another node's liveness counts only as that node's own signature over its
heartbeat and uptime (see the package docstring). Checking costs CPU, so a beat is checked only
when it would be news, and one digest pays for at most `MAX_CHECKS`, starting each time at a
different place so that no node's beats starve.
"""

from __future__ import annotations

from typing import Any, Final

from mesh_llm.mesh.gossip._fields import _ms
from mesh_llm.mesh.gossip._records import Signer, Verifier, _sig_bytes, beat_signing_bytes
from mesh_llm.mesh.gossip._table import PeerTable

MAX_CHECKS: Final = 64  # relayed beats whose signature one digest may cost

Beat = tuple[str, int, int, int, float, str]  # (node id, incarnation, heartbeat, up_ms, age_s, sig)


class OwnBeat:
    """This node's current beat, signed with its uptime on its own clock (none without a signer)."""

    def __init__(self, node_id: str, signer: Signer | None) -> None:
        self.node_id = node_id
        self._signer = signer
        self._started: float | None = None  # our clock at the first signed beat
        self.signed: tuple[int, str] | None = None  # (uptime ms, signature hex)

    def sign(self, incarnation: int, heartbeat: int, now: float) -> None:
        """Sign the beat that `heartbeat` now is."""
        if self._signer is None:
            return
        if self._started is None:
            self._started = now
        up_ms = _ms(now - self._started)
        self.signed = (
            up_ms,
            self._signer(beat_signing_bytes(self.node_id, incarnation, heartbeat, up_ms)).hex(),
        )


class RelayedBeats:
    """Relayed signed beats: checked, then handed to the failure detector or the table."""

    def __init__(self, own_id: str, table: PeerTable, verifier: Verifier) -> None:
        self._id = own_id
        self._table = table
        self._verify = verifier
        self._cursor = 0

    def take(self, peer_id: str, beats: list[Beat], now: float) -> list[str]:
        """Take in the beats of one digest from `peer_id`; return timed-out nodes to pull again."""
        table, detector = self._table, self._table.detector
        want: list[str] = []
        checks = MAX_CHECKS
        start = self._cursor % len(beats)
        self._cursor = start + MAX_CHECKS
        for k in range(len(beats)):
            node_id, inc, hb, up_ms, age_s, sig = beats[(start + k) % len(beats)]
            if node_id == peer_id:  # its own word: ours to relay, checked by whoever relies on it
                if node_id in table.records:
                    detector.signed_by_owner(node_id, hb, up_ms, sig)
                continue
            if node_id == self._id:
                continue
            mine = table.records.get(node_id)
            back: float | None = None
            if mine is None:
                back = table.returning_at(peer_id, node_id, inc, hb, up_ms, age_s, now)
                if back is None:
                    continue
            elif inc != mine.incarnation or hb <= detector.heartbeat(node_id):
                continue  # nothing new: costs no signature check
            checks -= 1
            if checks < 0:
                break
            raw = _sig_bytes(sig)
            if raw is None or not self._verify(node_id, beat_signing_bytes(node_id, inc, hb, up_ms), raw):
                continue
            if mine is not None:
                detector.observe_signed(node_id, hb, up_ms, now, age_s, sig)
            elif back is not None and table.unbury(node_id, (hb, up_ms, back, sig), now):
                want.append(node_id)  # a falsely suspected node, alive by its own word
        return want


def digest_beats(
    table: PeerTable, own: OwnBeat, incarnation: int, heartbeat: int, now: float
) -> list[list[Any]]:
    """The signed beats a digest carries: every node's latest we know of, and ours."""
    records = table.records
    beats = [
        [n, records[n].incarnation, hb, up, age, sig]
        for n, hb, up, age, sig in table.detector.signed_rows(now)
    ]
    if own.signed is not None:
        up, sig = own.signed
        beats.append([own.node_id, incarnation, heartbeat, up, 0, sig])
    return beats
