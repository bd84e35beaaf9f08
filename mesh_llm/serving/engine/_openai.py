"""OpenAI request bodies -> validated generation options (pure).

Every field a client may send is checked for type and range here, so a bad value gets a 400
naming the field instead of a 500 deeper in. Unknown fields are ignored, as OpenAI's own
clients add new ones over time. The sampling fields' defaults and bounds are declared in
`_sampling`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mesh_llm.errors import RequestRejected
from mesh_llm.serving.engine._sampling import Sampling, bounded_fields

MAX_N = 8
MAX_STOPS = 16
MAX_STOP_CHARS = 256
BAN = -1e30  # huge but finite: a grammar may leave only banned tokens, and one must be chosen
MAX_TOP_LOGPROBS = 20
# Cheap bounds checked on the parsed body before any conversion (see `check_request_cost`): a
# body under the size limit must not cost seconds of template rendering or grammar building.
MAX_MESSAGES = 4096
MAX_TOOLS = 128  # OpenAI's own limit
MAX_SCHEMA_NODES = 8192  # JSON values in all of a request's schemas (tools and response_format)
MAX_PROPERTIES = 256  # of one object schema: optional properties make a grammar quadratic work


class RequestError(RequestRejected, ValueError):
    """A request the server cannot take, with its OpenAI error fields.

    `mesh_llm.http_errors` turns it into the HTTP answer; a 503 (busy, or generation failed)
    asks the client to retry in a second.
    """

    def __init__(
        self, message: str, *, param: str | None = None, code: str = "invalid_value", status: int = 400
    ) -> None:
        super().__init__(
            message, param=param, code=code, status=status, retry_after_s=1 if status == 503 else None
        )


@dataclass(frozen=True)
class ResponseFormat:
    kind: str = "text"  # text | json_object | json_schema
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Options(Sampling):
    """What one completion request asks for, beyond its prompt or messages: the sampling fields
    of `Sampling`, and these."""

    max_tokens: int | None = None
    min_tokens: int = 0  # llama.cpp's extension: no end of generation before this many tokens
    stops: tuple[str, ...] = ()
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token plus k alternatives
    response_format: ResponseFormat = ResponseFormat()


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"'{key}' must be a number, not {value!r}", param=key)
    if not lo <= value <= hi:
        raise RequestError(f"'{key}' must be between {lo:g} and {hi:g}, not {value}", param=key)
    return float(value)


def _integer(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(f"'{key}' must be an integer, not {value!r}", param=key)
    if not lo <= value <= hi:
        raise RequestError(f"'{key}' must be between {lo} and {hi}, not {value}", param=key)
    return int(value)


def _flag(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false, not {value!r}", param=key)
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOPS:
            raise RequestError(f"'stop' takes at most {MAX_STOPS} strings", param="stop")
        if any(len(s) > MAX_STOP_CHARS for s in value):
            raise RequestError(f"each 'stop' string may be at most {MAX_STOP_CHARS} characters", param="stop")
        return tuple(s for s in value if s)
    raise RequestError("'stop' must be a string or an array of strings", param="stop")


def _logit_bias(value: Any, n_vocab: int) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise RequestError("'logit_bias' must map token ids to numbers", param="logit_bias")
    out = []
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise RequestError(f"'logit_bias' key {key!r} is not a token id", param="logit_bias") from None
        if not 0 <= token < n_vocab:
            raise RequestError(f"'logit_bias' token {token} is not in the vocabulary", param="logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise RequestError(
                f"'logit_bias' values must be numbers in [-100, 100], not {bias!r}", param="logit_bias"
            )
        # OpenAI's -100 means "never": make it so rather than merely unlikely (see BAN).
        out.append((token, BAN if bias <= -100 else float(bias)))
    return tuple(out)


def _response_format(value: Any) -> ResponseFormat:
    if value is None:
        return ResponseFormat()
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise RequestError(
            '\'response_format\' must be {"type": "text" | "json_object" | "json_schema"}',
            param="response_format",
        )
    kind = value["type"]
    if kind != "json_schema":
        return ResponseFormat(kind)
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise RequestError(
            "'response_format.json_schema' must be an object", param="response_format.json_schema"
        )
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, dict):
        raise RequestError(
            "'response_format.json_schema.schema' must be a JSON schema object",
            param="response_format.json_schema.schema",
        )
    return ResponseFormat("json_schema", schema)


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The bounded sampling fields of a body, each its default when absent."""
    defaults = Sampling()
    values: dict[str, Any] = {}
    for f in bounded_fields():
        default, lo, hi = getattr(defaults, f.name), f.metadata["lo"], f.metadata["hi"]
        if f.metadata["integer"]:
            values[f.name] = _integer(body, f.name, default, lo, hi)
        else:
            values[f.name] = _number(body, f.name, default, lo, hi)
    return values


def parse_options(body: dict[str, Any], *, chat: bool, n_vocab: int) -> Options:
    """Validate the generation fields of a chat or text completion body."""
    max_tokens = _integer(body, "max_tokens", None, 1, 1 << 30)
    max_completion = _integer(body, "max_completion_tokens", None, 1, 1 << 30)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    stream = _flag(body, "stream")
    if chat:
        want = _flag(body, "logprobs")
        top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if top is not None and not want:
            raise RequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        logprobs = (top or 0) if want else None
    else:
        logprobs = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    min_tokens = int(_integer(body, "min_tokens", 0, 0, 1 << 30) or 0)
    return Options(
        max_tokens=max_completion if max_completion is not None else max_tokens,
        min_tokens=min_tokens,
        **_sampling(body),
        logit_bias=_logit_bias(body.get("logit_bias"), n_vocab),
        stops=_stops(body.get("stop")),
        n=int(_integer(body, "n", 1, 1, MAX_N) or 1),
        stream=stream,
        include_usage=stream and bool((stream_options or {}).get("include_usage") is True),
        logprobs=logprobs,
        response_format=_response_format(body.get("response_format")),
    )


def prompt_text(body: dict[str, Any]) -> str:
    """The prompt of a text completion: a string, or an array holding one string."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and len(prompt) > 1:
        raise RequestError(
            "this server takes one prompt per request", param="prompt", code="unsupported_value"
        )
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string", param="prompt")
    return prompt


def check_request_cost(body: dict[str, Any]) -> None:
    """Refuse a body whose messages, tools or schemas are too many or too big to convert.

    Runs before validation, rendering or grammar building and costs at most MAX_SCHEMA_NODES
    steps, so what is refused here is refused at once. Malformed fields are left to the checks
    that name them.
    """
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise RequestError(
            f"'messages' holds {len(messages)} messages; the limit is {MAX_MESSAGES}", param="messages"
        )
    tools = body.get("tools")
    if isinstance(tools, list) and len(tools) > MAX_TOOLS:
        raise RequestError(f"'tools' holds {len(tools)} tools; the limit is {MAX_TOOLS}", param="tools")
    schemas: list[tuple[str, Any]] = [("tools", tools)]
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        schemas.append(("response_format", response_format.get("json_schema")))
    for param, root in schemas:
        _check_schema_size(root, param)


def _check_schema_size(root: Any, param: str) -> None:
    pending = [root]
    nodes = 0
    while pending:
        value = pending.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise RequestError(f"'{param}' holds schemas of more than {MAX_SCHEMA_NODES} values", param=param)
        if isinstance(value, dict):
            properties = value.get("properties")
            if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
                raise RequestError(
                    f"a schema in '{param}' has {len(properties)} properties; the limit is {MAX_PROPERTIES}",
                    param=param,
                )
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
