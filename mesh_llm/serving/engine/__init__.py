"""mesh-llm's own model server: continuous batching over llama-cpp-python's low-level API.

`Engine` runs slots and the decode loop (`_engine`), `ModelApp` puts OpenAI's /v1 routes in
front of it (`_http`), and the pure parts turn requests into options (`_openai`), messages
into prompts (`_chat`), output into tool calls (`_tools`) and token bytes into text (`_text`).
"""

from mesh_llm.serving.engine._engine import Engine, EngineConfig, EngineStats, QueueFull
from mesh_llm.serving.engine._http import DEFAULT_MAX_BODY, ModelApp, ServerInfo

__all__ = ["DEFAULT_MAX_BODY", "Engine", "EngineConfig", "EngineStats", "ModelApp", "QueueFull", "ServerInfo"]
