"""The public surfaces of the transport and gossip packages: what other packages may import."""

from __future__ import annotations

import mesh_llm.transport as transport


def test_transport_public_names() -> None:
    assert sorted(transport.__all__) == sorted(
        [
            "ALPN",
            "DEFAULT_ENGINE",
            "ENGINES",
            "CloseCode",
            "MeshStreamReader",
            "MeshStreamWriter",
            "MeshTransport",
            "MessageHandler",
            "PeerLink",
            "StreamCode",
            "StreamHandler",
            "StreamSink",
            "TransportConfig",
        ]
    )
    for name in transport.__all__:
        assert getattr(transport, name) is not None
