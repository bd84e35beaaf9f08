"""The node: one asyncio runtime that wires models, backends, the API and the console together.

`Node(config, load_resources(config))` (in `_lifecycle.py`) is assembled from its parts: its
state and split seam (`_base.py`), what the proxy sees (`_serving.py`), the models it serves
(`_models.py`), the mesh it is in (`_meshes.py`) and its status snapshot (`_snapshot.py`;
`status.py` renders it as a pure function).
"""

from mesh_llm.node._base import NodeResources, load_resources
from mesh_llm.node._lifecycle import Node
from mesh_llm.node._stop_watch import StopWatch

__all__ = ["Node", "NodeResources", "StopWatch", "load_resources"]
