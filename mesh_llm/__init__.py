"""mesh-llm: pool spare GPU and CPU capacity across machines to serve LLMs behind one OpenAI API."""

from mesh_llm.errors import MeshError

__version__ = "0.1.0"

__all__ = ["MeshError", "__version__"]
