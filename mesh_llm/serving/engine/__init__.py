"""mesh-llm's own model server: continuous batching over llama-cpp-python's low-level API.

`Engine` runs slots and the decode loop (`_engine`) over jobs and events (`_jobs`), `ModelApp`
puts OpenAI's /v1 routes in front of it (`_http`): requests are read and checked in `_requests`,
answered whole in `_answers` or streamed in `_streaming`. The pure parts turn requests into
options (`_openai`), schemas into grammars (`_grammar`), messages into prompts (`_chat`), tool
definitions into choices (`_tools`), output into content, reasoning and tool calls in the model's
own dialect (`dialects`, with `_tool_formats` reading calls written as JSON) and token bytes into
text (`_text`).
"""

from fastapi import FastAPI

from mesh_llm.serving.engine._chat import ChatTemplate
from mesh_llm.serving.engine._draft import LOOKUP, Drafter, LookupDrafter, check_vocab
from mesh_llm.serving.engine._drafter import ModelDrafter
from mesh_llm.serving.engine._engine import Engine
from mesh_llm.serving.engine._http import DEFAULT_MAX_BODY, ModelApp, ServerInfo
from mesh_llm.serving.engine._jobs import EngineConfig, EngineStats, QueueFull
from mesh_llm.serving.engine._llama import Model

__all__ = [
    "DEFAULT_MAX_BODY",
    "LOOKUP",
    "Drafter",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "LookupDrafter",
    "Model",
    "ModelApp",
    "QueueFull",
    "ServerInfo",
    "build_app",
    "check_vocab",
]


def build_app(
    model: Model, config: EngineConfig, info: ServerInfo, draft: Model | Drafter | None = None
) -> FastAPI:
    """The engine for a loaded `model`, started, and the HTTP app in front of it.

    A loaded draft model becomes a drafter with the engine's slots and context; the model's own
    chat template is used when its GGUF has one.
    """
    if isinstance(draft, Model):
        draft = ModelDrafter(
            draft,
            name=draft.path.stem,
            n_seq=config.n_slots,
            n_ctx_seq=config.n_ctx_slot,
            n_batch=config.batch_size(drafting=False),
            n_threads=config.n_threads,
            n_threads_batch=config.n_threads_batch,
        )
    engine = Engine(model, config, draft)
    source = model.chat_template()
    template = (
        ChatTemplate(source, bos_token=model.special_text("bos"), eos_token=model.special_text("eos"))
        if source
        else None
    )
    engine.start()
    app = ModelApp(engine, model, template, info).app
    app.state.engine = engine  # the model server stops it at exit: queued cache writes are flushed
    return app
