"""A copy of a GGUF model whose chat template can call tools (Hermes style, on ChatML turns).

The bundled SmolLM2-135M speaks ChatML but its template knows nothing of tools; tests of the
tool-calling path give it `TOOL_TEMPLATE` instead. The weights are copied unchanged.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"

# Our own Hermes-style template: tools listed as JSON in <tools></tools> inside the system turn,
# calls answered in <tool_call></tool_call> blocks, results passed back as <tool_response> blocks
# inside a user turn (consecutive results share one turn).
TOOL_TEMPLATE = """\
{%- if messages and messages[0].role == 'system' -%}
  {%- set system_text = messages[0].content -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set system_text = '' -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- if tools -%}
  {{- '<|im_start|>system\\n' + (system_text or 'You are a helpful assistant.') + '\\n\\n' -}}
  {{- '# Tools\\n\\nThese functions are at your disposal; each signature is a JSON object '
      + 'inside <tools></tools>:\\n<tools>' -}}
  {%- for tool in tools -%}
    {{- '\\n' + (tool | tojson) -}}
  {%- endfor -%}
  {{- '\\n</tools>\\n\\nTo use a function, reply with one <tool_call></tool_call> block per call, '
      + 'each holding a JSON object with the function name and its arguments:\\n'
      + '<tool_call>\\n{"name": <function-name>, "arguments": <arguments-object>}\\n</tool_call>'
      + '<|im_end|>\\n' -}}
{%- elif system_text -%}
  {{- '<|im_start|>system\\n' + system_text + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in turns -%}
  {%- if message.role == 'assistant' -%}
    {{- '<|im_start|>assistant' -}}
    {%- if message.content -%}
      {{- '\\n' + message.content -}}
    {%- endif -%}
    {%- for call in message.tool_calls or [] -%}
      {%- set fn = call.function if call.function is defined else call -%}
      {{- '\\n<tool_call>\\n{"name": ' + (fn.name | tojson) + ', "arguments": ' -}}
      {%- if fn.arguments is string -%}
        {{- fn.arguments -}}
      {%- else -%}
        {{- fn.arguments | tojson -}}
      {%- endif -%}
      {{- '}\\n</tool_call>' -}}
    {%- endfor -%}
    {{- '<|im_end|>\\n' -}}
  {%- elif message.role == 'tool' -%}
    {%- if loop.first or turns[loop.index0 - 1].role != 'tool' -%}
      {{- '<|im_start|>user' -}}
    {%- endif -%}
    {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' -}}
    {%- if loop.last or turns[loop.index0 + 1].role != 'tool' -%}
      {{- '<|im_end|>\\n' -}}
    {%- endif -%}
  {%- else -%}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""


def write_tool_capable_gguf(src: Path, dst: Path, template: str = TOOL_TEMPLATE) -> Path:
    """Copy the GGUF at `src` to `dst` with its chat template replaced by `template`.

    Every other metadata field and every tensor is copied as it is (tensor data byte for byte).
    """
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    arch_field = reader.get_field("general.architecture")
    assert arch_field is not None, f"{src} has no general.architecture"
    writer = GGUFWriter(dst, arch=str(arch_field.contents()), endianess=reader.endianess)
    alignment = reader.get_field("general.alignment")
    if alignment is not None:
        writer.data_alignment = int(alignment.contents())
    for field in reader.fields.values():
        # GGUF.* are the header counts the reader exposes as fields; the writer makes its own, as
        # it does general.architecture.
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", CHAT_TEMPLATE_KEY):
            continue
        kind = field.types[0]
        sub_kind = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_kind)
    writer.add_key_value(CHAT_TEMPLATE_KEY, template, GGUFValueType.STRING)
    for tensor in reader.tensors:
        # The stored (byte) shape and the raw type let the writer lay out quantized blocks as-is.
        writer.add_tensor_info(
            tensor.name,
            tensor.data.shape,
            tensor.data.dtype,
            tensor.data.nbytes,
            raw_dtype=tensor.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return dst
