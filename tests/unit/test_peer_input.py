"""Every parser of peer input is total (issue 25): pongs and stream-open headers, with any JSON
value in any field, give a value or are refused, never an exception. (Gossip messages, records
and digests are fuzzed in test_gossip*.py; claims, wants and declines in test_split_records.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.mesh.gossip import GossipConfig
from mesh_llm.mesh.service import MeshService, MeshSettings, MeshTimings, record_for
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import new_mesh
from mesh_llm.split._worker import rpc_port
from mesh_llm.transport import TransportConfig
from mesh_llm.transport._liveness import Liveness

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["n", "h", "t"]), JSON))
def test_any_pong_is_taken_or_ignored(pong: dict[str, Any]) -> None:
    async def run() -> None:
        sent: list[dict[str, Any]] = []
        live = Liveness(sent.append, lambda: None, interval=3600.0)
        live.ping()
        live.on_pong(pong, asyncio.get_running_loop().time())
        live.on_pong({**pong, "n": sent[-1]["n"]}, asyncio.get_running_loop().time())
        assert live.silent_for() >= 0.0

    asyncio.run(run())


_SERVICE: list[MeshService] = []


def _service() -> MeshService:
    if not _SERVICE:
        me = NodeIdentity.generate()
        state = Path("/nonexistent-state-dir")  # never written: the service is not started
        settings = MeshSettings(
            state, gossip=GossipConfig(), transport=TransportConfig(), timing=MeshTimings()
        )
        _SERVICE.append(
            MeshService(
                me, new_mesh(), settings, record_for(me.node_id, "0.1.0"),
                http_target={"m": Path("/run/m.sock")}.get,
                rpc_target=lambda peer, model, epoch: rpc_port(None, peer, epoch),
            )
        )  # fmt: skip
    return _SERVICE[0]


@settings(max_examples=80, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["model", "epoch", "kind", "x"]), JSON))
def test_any_stream_open_header_is_routed_or_refused(header: dict[str, Any]) -> None:
    service = _service()
    socket_path = service._resolve_http("a" * 64, header)
    assert socket_path is None or isinstance(socket_path, Path)
    port = service._resolve_rpc("a" * 64, header)
    assert port is None or isinstance(port, int)
    assert service._resolve_http("a" * 64, {**header, "model": "m"}) == Path("/run/m.sock")
