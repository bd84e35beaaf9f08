"""mesh-llm's own model server: continuous batching over llama-cpp-python's low-level API.

`Engine` runs slots and the decode loop (`_engine`) over jobs and events (`_jobs`), `ModelApp`
puts OpenAI's /v1 routes in front of it (`_http`): requests are read and checked in `_requests`,
answered whole in `_answers` or streamed in `_streaming`. The pure parts turn requests into
options (`_openai`), schemas into grammars (`_grammar`), messages into prompts (`_chat`), tool
definitions into choices (`_tools`), output into content, reasoning and tool calls in the model's
own dialect (`_dialects`, with `_tool_formats` reading calls written as JSON) and token bytes into
text (`_text`).
"""

from mesh_llm.serving.engine._engine import Engine
from mesh_llm.serving.engine._http import DEFAULT_MAX_BODY, ModelApp, ServerInfo
from mesh_llm.serving.engine._jobs import EngineConfig, EngineStats, QueueFull

__all__ = ["DEFAULT_MAX_BODY", "Engine", "EngineConfig", "EngineStats", "ModelApp", "QueueFull", "ServerInfo"]
