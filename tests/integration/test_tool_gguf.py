"""The tool-capable copy of SmolLM2-135M: same weights and metadata, a new chat template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader

from tests.harness import smollm2_path
from tests.tool_gguf import CHAT_TEMPLATE_KEY, TOOL_TEMPLATE, write_tool_capable_gguf


def test_copy_swaps_only_the_chat_template(tmp_path: Path) -> None:
    src = smollm2_path()
    dst = write_tool_capable_gguf(src, tmp_path / "smollm2-tools.gguf")
    before, after = GGUFReader(src), GGUFReader(dst)

    template = after.get_field(CHAT_TEMPLATE_KEY)
    assert template is not None and template.contents() == TOOL_TEMPLATE
    old_template = before.get_field(CHAT_TEMPLATE_KEY)
    assert old_template is not None and old_template.contents() != TOOL_TEMPLATE

    def metadata(reader: GGUFReader) -> dict[str, object]:
        return {k: f.contents() for k, f in reader.fields.items() if k != CHAT_TEMPLATE_KEY}

    assert metadata(after) == metadata(before)
    assert len(after.tensors) == len(before.tensors)
    for a, b in zip(after.tensors, before.tensors, strict=True):
        assert (a.name, a.tensor_type, list(a.shape)) == (b.name, b.tensor_type, list(b.shape))
    # Spot-check the data itself: first and last tensors byte for byte.
    for i in (0, -1):
        assert np.array_equal(after.tensors[i].data.view(np.uint8), before.tensors[i].data.view(np.uint8))
