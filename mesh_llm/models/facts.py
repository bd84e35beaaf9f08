"""Facts about a GGUF file read with the `gguf` package: architecture, layers, tensor sizes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mesh_llm.errors import GGUFError

_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class GGUFFacts:
    """What the planner and the status view need to know about one model file."""

    path: Path
    arch: str
    n_layers: int
    context_length: int
    size_bytes: int
    layer_bytes: tuple[int, ...] = field(repr=False)  # weight bytes per block, index = layer
    other_bytes: int = 0  # embeddings, output head, norms


def _field_value(reader: object, key: str) -> object | None:
    fields = reader.fields
    f = fields.get(key)
    if f is None:
        return None
    value = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(value).decode("utf-8", errors="replace")
    return value[0].item() if hasattr(value, "__len__") else value


def read_facts(path: Path) -> GGUFFacts:
    """Read architecture, layer count and per-layer tensor bytes from a GGUF file."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # gguf raises ValueError/struct.error/OSError; translate here
        raise GGUFError(f"{path} is not a readable GGUF file: {exc}") from exc
    arch = str(_field_value(reader, "general.architecture") or "unknown")
    n_layers = int(_field_value(reader, f"{arch}.block_count") or 0)  # type: ignore[call-overload]
    ctx = int(_field_value(reader, f"{arch}.context_length") or 0)  # type: ignore[call-overload]
    per_layer = [0] * n_layers
    other = 0
    for tensor in reader.tensors:
        m = _LAYER.match(tensor.name)
        if m and int(m.group(1)) < n_layers:
            per_layer[int(m.group(1))] += int(tensor.n_bytes)
        else:
            other += int(tensor.n_bytes)
    return GGUFFacts(path, arch, n_layers, ctx, path.stat().st_size, tuple(per_layer), other)
