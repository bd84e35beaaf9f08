"""The GPU plumbing on the CPU path, with the real SmolLM2: explicit devices, KV cache types, KV shape."""

from __future__ import annotations

import pytest

from mesh_llm.errors import BackendError
from mesh_llm.planning.offload import cache_type, kv_bytes_per_token
from mesh_llm.serving.engine._llama import Batch, Context, Model
from tests.harness import smollm2_path


@pytest.fixture(scope="module")
def model() -> Model:
    m = Model(smollm2_path(), n_gpu_layers=0, devices=["CPU"])
    yield m  # type: ignore[misc]
    m.close()


def test_kv_shape_comes_from_the_model(model: Model) -> None:
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims.
    assert (model.n_layer, model.n_head_kv, model.head_dim_k, model.head_dim_v) == (30, 3, 64, 64)
    assert kv_bytes_per_token(30, 3, 64, 64, type_k="f16", type_v="f16") == 30 * 2 * 3 * 64 * 2


def test_a_quantised_k_cache_decodes(model: Model) -> None:
    ctx = Context(
        model, n_seq=1, n_ctx_seq=256, n_batch=32, n_threads=1, n_threads_batch=2, type_k=cache_type("q8_0")
    )
    try:
        batch = Batch(32)
        for pos, tok in enumerate(model.tokenize("Hello there", add_special=True, parse_special=False)):
            batch.add(tok, pos, 0, logits=True)
        assert ctx.decode(batch) == 0
        assert ctx.logits(batch.n - 1).shape == (model.n_vocab,)
    finally:
        ctx.close()


def test_an_unknown_device_name_is_refused_before_loading() -> None:
    with pytest.raises(BackendError, match="CUDA7"):
        Model(smollm2_path(), n_gpu_layers=99, devices=["CUDA7"])
