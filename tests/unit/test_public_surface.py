"""The public surfaces of the transport and gossip packages: what other packages may import."""

from __future__ import annotations

import mesh_llm.mesh.gossip as gossip
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


def test_gossip_public_names() -> None:
    assert sorted(gossip.__all__) == sorted(
        [
            "MAX_MESSAGE_BYTES",
            "Departure",
            "EngineState",
            "FailureDetector",
            "GossipConfig",
            "GossipEngine",
            "GossipEvent",
            "MessageType",
            "ModelAd",
            "NodeRecord",
            "Outgoing",
            "PeerJoined",
            "PeerLeft",
            "PeerRestarted",
            "PeerStatus",
            "PeerUpdated",
            "PeerView",
            "Signer",
            "Verifier",
            "bye_signing_bytes",
            "record_signing_bytes",
        ]
    )
    for name in gossip.__all__:
        assert getattr(gossip, name) is not None
