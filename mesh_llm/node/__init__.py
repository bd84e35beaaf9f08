"""The node: one asyncio runtime that wires models, backends, the API and the console together.

`Node(config, load_resources(config))` (in `_lifecycle.py`) composes a few components, each
owning its state: serving (`_local.py`: the model servers), placement (`_placement.py`: whole
or split, standbys), membership (`_membership.py`: the mesh and discovery) and the front
(`_front.py`: what the proxy reads). `routing.py` derives the frozen routing table as a pure
function; `status.py` renders a frozen status snapshot (`_snapshot.py`) as one.
"""

from mesh_llm.node._lifecycle import Node
from mesh_llm.node._resources import NodeResources, load_resources
from mesh_llm.node._stop_watch import StopWatch

__all__ = ["Node", "NodeResources", "StopWatch", "load_resources"]
