#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and nvcc but no package registry (see DESIGN.md):
#   1. builds llama-cpp-python with CUDA + RPC for the GPU present only (CMAKE_CUDA_ARCHITECTURES
#      native, cached in .venv/wheels) from the folder benchmarks/gpu_check_prepare.sh filled;
#   2. serves a model solo on the GPU (the demo model where it is at hand, else a ~1 GB
#      random-weight GGUF written with gguf) and checks from llama.cpp's load log that every
#      layer was offloaded;
#   3. runs a 2-node split, the host's layers and a local RPC worker's both on the GPU;
#   4. prints decode tok/s on the GPU against the CPU.
# Usage: bash benchmarks/gpu_check.sh [PREPARED_DIR=shared/gpu_check]   (about 10 minutes, build included)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
prepared=${1:-$root/shared/gpu_check}
venv="$root/.venv"
LLAMA_VERSION="0.3.36"
say() { printf '[gpu_check] %s\n' "$*" >&2; }
command -v nvcc >/dev/null || { echo "gpu_check needs nvcc" >&2; exit 1; }
nvidia-smi -L | grep -q '^GPU ' || { echo "gpu_check needs an NVIDIA GPU" >&2; exit 1; }

# The system site packages carry numpy, jinja2, scikit-build-core, cmake and ninja.
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
py="$venv/bin/python"
pip=("$py" -m pip install -q --no-index --find-links "$prepared/wheels")
if ! ls "$venv"/wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then
  say "building llama-cpp-python $LLAMA_VERSION with CUDA (native arch) + RPC"
  CMAKE_ARGS="-DGGML_RPC=on -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$py" -m pip wheel -q --no-index --no-deps --no-build-isolation -w "$venv/wheels" \
    "$prepared/llama_cpp_python-$LLAMA_VERSION.tar.gz"
fi
"${pip[@]}" --no-deps --force-reinstall "$venv"/wheels/llama_cpp_python-*.whl
"${pip[@]}" fastapi uvicorn cryptography aioquic qh3 gguf diskcache httpx psutil rich
"$py" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>/dev/null ||
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() and llama_cpp.llama_supports_rpc() else 1)' ||
  { echo "the wheel lacks CUDA or RPC" >&2; exit 1; }
echo cuda >"$venv/.mesh-llm-gpu"
"$py" -m mesh_llm gpus

model=$("$py" -c 'from tests.harness import smollm2_path; print(smollm2_path())' 2>/dev/null || true)
if [ -z "$model" ] || [ ! -f "$model" ]; then
  model="$root/.venv/gpu-check-random.gguf"
  [ -f "$model" ] || "$py" -m benchmarks.gpu_check model "$model"
fi
say "model: $model"

gpu_line=$("$py" -m benchmarks.gpu_check solo "$model" CUDA0 256 | tee /dev/stderr | tail -1)
cpu_line=$("$py" -m benchmarks.gpu_check solo "$model" CPU 32 | tee /dev/stderr | tail -1)

say "2-node split: the host keeps the lower layers on CUDA0, an RPC worker on CUDA0 the upper ones"
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$py" -m mesh_llm.serving.rpc_worker --port "$port" --device CUDA0 >"$venv/gpu-check-worker.log" 2>&1 &
worker=$!
trap 'kill "$worker" 2>/dev/null || true' EXIT
sleep 3
n_layers=$("$py" -c "from gguf import GGUFReader; r=GGUFReader('$model'); a=r.get_field('general.architecture').contents(); print(r.get_field(a+'.block_count').contents())")
half=$((n_layers / 2))
PYTHONUNBUFFERED=1 timeout 180 "$py" - "$model" "$port" "$half" "$((n_layers - half))" <<'PY'
import sys, time
from mesh_llm.planning.placement import parse_placement
from mesh_llm.serving.host_split import LlamaLogCapture, prepare_host_split
from mesh_llm.serving.engine._llama import Batch, Context, Model
path, port, host, worker = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
split = prepare_host_split([f"127.0.0.1:{port}"], [host, worker], host_gpus=[("CUDA0", 1)])
capture = LlamaLogCapture()
model = Model(path, n_gpu_layers=split.offload.n_gpu_layers, tensor_split=list(split.offload.tensor_split))
split.check(parse_placement(capture.finish()))
ctx = Context(model, n_seq=1, n_ctx_seq=256, n_batch=64, n_threads=8, n_threads_batch=16)
b = Batch(64); b.add(1, 0, 0, logits=True); ctx.decode(b)
t = time.perf_counter()
for pos in range(1, 65):
    b.clear(); b.add(int(ctx.logits(0).argmax()), pos, 0, logits=True); ctx.decode(b)
print(f"split (host {host} layers on CUDA0, RPC worker on CUDA0 {worker}): {64 / (time.perf_counter() - t):.1f} tok/s")
PY
gpu=$(echo "$gpu_line" | awk '{print $2}')
cpu=$(echo "$cpu_line" | awk '{print $2}')
"$py" -c "from benchmarks.gpu_check import speedup_line; print(speedup_line($gpu, $cpu))"
