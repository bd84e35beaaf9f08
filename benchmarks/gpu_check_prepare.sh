#!/usr/bin/env bash
# Run on a machine WITH registry access: fill a folder (under 64 MiB) with what gpu_check.sh needs
# on a GPU machine that has nvcc, CMake, ninja, scikit-build-core, numpy and jinja2 but no registry:
#   - wheels mesh-llm needs that such a machine lacks (fastapi, uvicorn, cryptography, aioquic,
#     qh3, gguf, diskcache, and their dependencies), for its Python and platform;
#   - the llama-cpp-python sdist without vendor/llama.cpp/{models,docs,tests,benches} (76.6 MB -> a few MB).
# Usage: bash benchmarks/gpu_check_prepare.sh [OUT_DIR=shared/gpu_check] [PYTHON_VERSION=3.11]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/shared/gpu_check}
pyver=${2:-3.11}
LLAMA_VERSION="0.3.36"
py=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$out/wheels"
"$py" -m pip download -q --dest "$out/wheels" --only-binary=:all: --python-version "$pyver" \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  fastapi uvicorn cryptography aioquic qh3 gguf diskcache httpx psutil rich huggingface_hub sse-starlette \
  starlette-context pydantic-settings
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download -q --no-deps --no-binary=:all: --dest "$work" "llama-cpp-python==$LLAMA_VERSION"
tar -C "$work" -xzf "$work/llama_cpp_python-$LLAMA_VERSION.tar.gz"
src="$work/llama_cpp_python-$LLAMA_VERSION"
rm -rf "$src/vendor/llama.cpp/models" "$src/vendor/llama.cpp/docs" "$src/vendor/llama.cpp/tests" \
  "$src/vendor/llama.cpp/benches" "$src/docs" "$src/tests"
tar -C "$work" -czf "$out/llama_cpp_python-$LLAMA_VERSION.tar.gz" "llama_cpp_python-$LLAMA_VERSION"
size=$(du -sm "$out" | cut -f1)
echo "[prepare] $out: ${size} MiB"
[ "$size" -lt 64 ] || { echo "over the 64 MiB a device command may carry" >&2; exit 1; }
