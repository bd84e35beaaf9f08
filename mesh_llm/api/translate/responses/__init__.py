"""OpenAI Responses (`POST /v1/responses`) served over the chat path.

A request becomes one Chat Completions body: `instructions` a leading system message, `input`
items the messages after it (`function_call` items an assistant turn's `tool_calls`,
`function_call_output` items `tool` messages), the flat function tools chat's nested ones,
`text.format` the `response_format`, `max_output_tokens` the `max_tokens`. The chat answer
comes back as a Response object whose `output` holds, in order, a `reasoning` item, a `message`
item and one `function_call` item per call; streamed, as the Responses event sequence:

    response.created, response.in_progress,
    per item: response.output_item.added,
        reasoning  response.content_part.added, response.reasoning_text.delta...,
                   response.reasoning_text.done, response.content_part.done
        message    response.content_part.added, response.output_text.delta...,
                   response.output_text.done, response.content_part.done
        call       response.function_call_arguments.delta..., response.function_call_arguments.done
    response.output_item.done,
    then response.completed or response.incomplete (or response.failed, and nothing after it).

`previous_response_id` is served from a `ResponseStore` the translator owns: every response made
with `store` keeps the whole chat conversation that led to it (its predecessors' included) and
its own answer as chat messages, so a follow-up replays that chain before its new input. The
chain holds no `instructions`: as at OpenAI, each request's own instructions apply.

The package, one module a concern:
  _store    ResponseStore: the conversations behind `previous_response_id`
  _input    `input` items as chat messages
  _request  ResponsesTranslator: a request checked and translated into one chat body
  _items    ResponseFrame, output items, usage and the replayed turn, in Responses' shapes
  _answer   ResponsesTurn: the Response for a whole chat answer
  _stream   ResponsesStream: a streamed chat answer as Responses events
"""

from mesh_llm.api.translate.responses._answer import ResponsesTurn
from mesh_llm.api.translate.responses._request import ResponsesTranslator
from mesh_llm.api.translate.responses._store import MAX_AGE_S, MAX_STORED, ResponseStore
from mesh_llm.api.translate.responses._stream import ResponsesStream

__all__ = [
    "MAX_AGE_S",
    "MAX_STORED",
    "ResponseStore",
    "ResponsesStream",
    "ResponsesTranslator",
    "ResponsesTurn",
]
