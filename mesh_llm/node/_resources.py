"""What the node finds on its machine before it starts: its identity and its memory."""

from __future__ import annotations

from dataclasses import dataclass

from mesh_llm.config import NodeConfig
from mesh_llm.mesh.state_dir import load_identity
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.serving.hardware import Capacity, detect_capacity


@dataclass(frozen=True)
class NodeResources:
    """What the node finds on its machine before it starts: its identity and its memory."""

    identity: NodeIdentity
    capacity: Capacity


def load_resources(config: NodeConfig) -> NodeResources:
    """Read (or create) the node's key file and detect its devices: the node's start-up I/O."""
    return NodeResources(
        load_identity(config.state_dir),
        detect_capacity(
            config.max_vram_bytes,
            client=config.client,
            device=config.device,
            reserved_ram=config.backend.cache_ram_bytes,
        ),
    )
