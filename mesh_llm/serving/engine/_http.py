"""The model server's HTTP layer: OpenAI's /v1 routes over one Engine, on FastAPI.

Work before a response starts (body limit, JSON, validation, template, tokenizing in a
worker thread, the context check, queueing) answers with a JSON error and a proper status
(``_requests``). Once a stream has started, a failure becomes one SSE error event followed by
``[DONE]`` (``_streaming``); whole answers are built in ``_answers``. A client that goes away
cancels its jobs, which frees their slots within one decode step.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mesh_llm import http_errors as api_errors
from mesh_llm.errors import BackendError
from mesh_llm.serving.engine._answers import (
    Meta,
    collect,
    gather_or_disconnect,
    wait_disconnect,
    whole_answer,
)
from mesh_llm.serving.engine._chat import ChatTemplate
from mesh_llm.serving.engine._engine import Engine
from mesh_llm.serving.engine._jobs import FinishReason, Job, QueueFull
from mesh_llm.serving.engine._llama import Model, SamplerSpec
from mesh_llm.serving.engine._openai import Options, RequestError
from mesh_llm.serving.engine._requests import Channel, Prepared, RequestReader
from mesh_llm.serving.engine._sampling import sampling_of
from mesh_llm.serving.engine._streaming import stream_answer
from mesh_llm.settings import MODEL_SERVER, find

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY: int = find(MODEL_SERVER, "max_body").default
MODEL_SERVER_ROUTES = (
    "The model server serves /mesh/health, /mesh/slots, /mesh/count_tokens, /v1/models, "
    "/v1/chat/completions and /v1/completions."
)


@dataclass
class ServerInfo:
    """What the HTTP layer serves besides completions."""

    alias: str
    max_body: int = DEFAULT_MAX_BODY
    created: int = field(default_factory=lambda: int(time.time()))
    extra: dict[str, Callable[[], Any]] = field(default_factory=dict)  # GET /mesh/<name> routes


class ModelApp:
    """Builds the FastAPI app around an engine, a model and its chat template."""

    def __init__(self, engine: Engine, model: Model, template: ChatTemplate | None, info: ServerInfo) -> None:
        self.engine = engine
        self.model = model
        self.template = template
        self.info = info
        self.requests = RequestReader(engine, model, template, alias=info.alias, max_body=info.max_body)
        self.app = self._build()

    def _spec(self, options: Options, grammar: str | None, index: int) -> SamplerSpec:
        sampling = sampling_of(options)
        # Each choice of n gets its own seed, so they differ yet repeat run to run.
        sampling["seed"] = None if options.seed is None else (options.seed + index) & 0xFFFFFFFF
        return SamplerSpec(**sampling, grammar=grammar, ban_eog=options.min_tokens > 0)

    async def _start(self, prepared: Prepared) -> list[tuple[Job, Channel]]:
        """Submit one job per choice; all or none (a full queue cancels the ones queued)."""
        capacity = self.engine.config.n_slots + self.engine.config.max_queue
        if prepared.options.n > capacity:
            raise RequestError(
                f"n={prepared.options.n} is more choices than this server can hold at once ({capacity})",
                param="n",
            )
        loop = asyncio.get_running_loop()
        started: list[tuple[Job, Channel]] = []
        for i in range(prepared.options.n):
            channel = Channel(loop)
            spec = self._spec(prepared.options, prepared.grammar, i)
            try:
                # Off the decode loop and the event loop: parsing a big grammar takes a while.
                sampler = await asyncio.to_thread(self.engine.make_sampler, spec)
            except BackendError as exc:
                for j, _ in started:
                    j.cancel()
                self.engine.wake()
                raise RequestError(f"cannot sample this request: {exc}") from exc
            job = Job(
                prompt=prepared.tokens,
                max_tokens=prepared.max_tokens,
                sampling=spec,
                emit=channel.emit,
                stops=prepared.options.stops,
                logprobs=prepared.options.logprobs,
                min_tokens=prepared.options.min_tokens,
                sampler=sampler,
            )
            try:
                self.engine.submit(job)
            except QueueFull as exc:
                sampler.close()
                for j, _ in started:
                    j.cancel()
                self.engine.wake()
                raise RequestError(
                    f"The model server is busy: {exc}. Retry shortly.",
                    code="server_busy",
                    status=503,
                ) from exc
            started.append((job, channel))
        return started

    def _build(self) -> FastAPI:
        app = FastAPI(title="mesh-llm model server", openapi_url=None, docs_url=None, redoc_url=None)

        api_errors.install(app, "model server", MODEL_SERVER_ROUTES)

        @app.get("/mesh/health")
        async def health() -> dict[str, Any]:
            return {"status": "ok", "model": self.info.alias}

        @app.get("/mesh/slots")
        async def slots() -> dict[str, Any]:
            return {
                "model": self.info.alias,
                "n_ctx_slot": self.engine.n_ctx_slot,
                **self.engine.stats().as_dict(),
            }

        for name, getter in self.info.extra.items():
            app.add_api_route(f"/mesh/{name}", _getter_route(getter), methods=["GET"])

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [self._card()]}

        @app.get("/v1/models/{model_id:path}")
        async def model(model_id: str) -> dict[str, Any]:
            if model_id.lower() != self.info.alias.lower():
                raise RequestError(
                    f"The model '{model_id}' does not exist",
                    param="model",
                    code="model_not_found",
                    status=404,
                )
            return self._card()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await self.requests.body(request)
            prepared = await self.requests.prepare_chat(body)
            return await self._respond(request, body, prepared, chat=True)

        @app.post("/mesh/count_tokens")
        async def count_tokens(request: Request) -> dict[str, Any]:
            # The prompt a chat body renders to, counted: Anthropic's count_tokens, via the proxy.
            body = await self.requests.body(request)
            return {"model": self.info.alias, "prompt_tokens": await self.requests.count_chat(body)}

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await self.requests.body(request)
            prepared = await self.requests.prepare_completion(body)
            return await self._respond(request, body, prepared, chat=False)

        return app

    def _card(self) -> dict[str, Any]:
        return {
            "id": self.info.alias,
            "object": "model",
            "created": self.info.created,
            "owned_by": "mesh-llm",
            "context_length": self.engine.n_ctx_slot,
        }

    async def _respond(
        self, request: Request, body: dict[str, Any], prepared: Prepared, *, chat: bool
    ) -> Response:
        model_name = self.info.alias
        jobs = await self._start(prepared)
        meta = Meta(("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], int(time.time()), model_name)
        if prepared.options.stream:
            return StreamingResponse(
                stream_answer(self.engine, jobs, prepared, meta, chat=chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watcher = asyncio.create_task(wait_disconnect(request))
        try:
            results = await gather_or_disconnect([collect(ch) for _, ch in jobs], watcher)
        finally:
            watcher.cancel()
            for job, _ in jobs:
                job.cancel()
            self.engine.wake()
        if results is None:  # the client left; nobody reads this
            return Response(status_code=499)
        errors = [f for _, f in results if f.reason is FinishReason.ERROR]
        if errors:
            raise RequestError(f"generation failed: {errors[0].error}", code="backend_error", status=503)
        return JSONResponse(whole_answer(results, prepared, meta, chat=chat))


def _getter_route(getter: Callable[[], Any]) -> Callable[[], Any]:
    async def route() -> Any:
        return getter()

    return route


__all__ = ["DEFAULT_MAX_BODY", "BackendError", "ModelApp", "ServerInfo"]
