"""Anthropic Messages (`POST /v1/messages`) over the chat path: requests, answers, streams, errors.

    Messages request ──begin──▶ chat body      (system, turns, tool_use/tool_result, tools, ...)
    chat completion ──answer──▶ Message        (thinking, text and tool_use blocks, stop_reason)
    chat chunks ──MessagesStream──▶ SSE events  (message_start, content_block_*, message_delta,
                                                 message_stop; `error` when the host fails)
    ApiError ──anthropic_error──▶ {"type": "error", "error": {"type", "message"}}

Only what a model server can do is taken: text, function tools and reasoning. Images, documents
and Anthropic's server tools (web search, bash, ...) get a 400 that names them, rather than a
model silently answering without them. Unknown top-level fields are ignored, as Anthropic's SDKs
add new ones over time. Pure: ids come from the `IdFactory` the translator is given.

The package, one module a concern:
  _messages  `system` and `messages` (content blocks, tool_use, tool_result) as chat messages
  _request   MessagesTranslator: the rest of a request (tools, tool_choice, sampling), and
             count_tokens_chat
  _answer    MessagesTurn: a whole chat answer as a Message, and the stop reasons
  _stream    MessagesStream: a streamed chat answer as Anthropic's events
  _usage     Anthropic's usage from chat's
  _errors    anthropic_error, error_type
"""

from mesh_llm.api.translate.anthropic._answer import MessagesTurn
from mesh_llm.api.translate.anthropic._errors import anthropic_error, error_type
from mesh_llm.api.translate.anthropic._request import MessagesTranslator, count_tokens_chat
from mesh_llm.api.translate.anthropic._stream import MessagesStream

__all__ = [
    "MessagesStream",
    "MessagesTranslator",
    "MessagesTurn",
    "anthropic_error",
    "count_tokens_chat",
    "error_type",
]
