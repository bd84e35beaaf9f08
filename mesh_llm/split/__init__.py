"""Split inference across the mesh: electing a model's coordinator, its host and its workers.

`SplitManager` runs it on the node's loop, seeing the node only through `SplitContext`. The
decisions are pure functions of a frozen `MeshView` (`_election.py`, `_decisions.py`); the
executors (`_host.py`, `_worker.py`) carry them out.
"""

from mesh_llm.split._context import Holdings, SplitContext
from mesh_llm.split._host import SplitHost, model_facts, serving_bytes
from mesh_llm.split._manager import SplitManager
from mesh_llm.split._worker import WorkerDuty

__all__ = [
    "Holdings",
    "SplitContext",
    "SplitHost",
    "SplitManager",
    "WorkerDuty",
    "model_facts",
    "serving_bytes",
]
