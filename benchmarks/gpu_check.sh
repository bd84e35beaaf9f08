#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU, nvcc, CMake, ninja, scikit-build-core, numpy and
# jinja2 but no package registry (DESIGN.md, "The GPU machine"). In ONE command, under one deadline:
#   1. verifies the folder benchmarks/gpu_check_prepare.sh filled (SHA256SUMS) and makes a venv
#      that installs only from it;
#   2. builds llama-cpp-python with CUDA + RPC for the GPU present only (see CMAKE_ARGS below);
#   3. on a ~1 GB random-weight GGUF written there: every layer on CUDA0 (llama.cpp's load log),
#      top-1 agreement with the CPU, prefill and decode tok/s on the GPU against the CPU, the engine
#      against llama-cpp-python's Llama, 4 streams against 1, and a 2-node split whose host layers
#      and RPC worker are both on the GPU.
# Every step has its own timeout and a failed step does not stop the others; the whole log goes to
# $OUT/gpu_check.log as it is written, so a command killed at its limit still brings it back.
# Usage: bash benchmarks/gpu_check.sh [--rehearse] [CARRY_DIR=build/gpu-carry]
#   --rehearse   stop before the CUDA build: check every carried file, install every wheel into a
#                fresh venv, configure the trimmed sdist with CMake (CPU only), import the check
#   env OUT (default build/gpu-check-out), DEADLINE_S (default 510), PYTHON (default python3)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
rehearse=0
if [ "${1:-}" = "--rehearse" ]; then rehearse=1 && shift; fi
carry=$(cd "${1:-$root/build/gpu-carry}" && pwd)
out=${OUT:-$root/build/gpu-check-out}
deadline=${DEADLINE_S:-510}
LLAMA_VERSION="0.3.36"

# The deadline: the run tool gives a command 600 s; ending by 510 leaves time for the log to come
# back. Each step's timeout is cut to what is left before it (and kills the step's whole process
# group: pip, CMake, ninja, nvcc), so the script ends by the deadline on its own; the outer
# timeout is only a backstop.
if [ -z "${GPU_CHECK_INNER:-}" ]; then
  mkdir -p "$out"
  args=("$carry")
  [ $rehearse = 0 ] || args=(--rehearse "$carry")
  GPU_CHECK_INNER=1 timeout -k 10 $((deadline + 20)) bash "${BASH_SOURCE[0]}" "${args[@]}" 2>&1 |
    tee "$out/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi

exec 3>&1  # the script's own lines, which a step's redirection must not swallow
say() { printf '[gpu_check %4ds] %s\n' "$SECONDS" "$*" >&3; }
failed=()
# step NAME SECONDS COMMAND...: run it under its own timeout, record a failure, go on.
step() {
  local name=$1 limit=$2 left=$((deadline - SECONDS - 5)) rc
  shift 2
  [ "$left" -gt 5 ] || { failed+=("$name (no time left)"); say "!! no time left for $name"; return 124; }
  [ "$limit" -le "$left" ] || limit=$left
  say "== $name (at most ${limit}s)"
  timeout -k 5 "$limit" "$@"
  rc=$?
  [ $rc = 0 ] || { failed+=("$name (rc $rc)"); say "!! $name failed (rc $rc)"; }
  return $rc
}
finish() {
  say "summary: ${#failed[@]} failed${failed:+: ${failed[*]}}"
  [ ${#failed[@]} = 0 ]
  exit $?
}

say "== carried files ($carry)"
(cd "$carry" && sha256sum --quiet -c SHA256SUMS) || { say "the carry folder is incomplete: rerun gpu_check_prepare.sh"; exit 1; }
sdist="$carry/llama_cpp_python-$LLAMA_VERSION.tar.gz"
command -v nvcc >/dev/null || { say "gpu_check needs nvcc"; exit 1; }
nvcc --version | tail -2
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader ||
  { say "gpu_check needs an NVIDIA GPU"; exit 1; }
nproc
"${PYTHON:-python3}" --version

# The venv sees the machine's numpy, jinja2, scikit-build-core, CMake and ninja. Without
# ensurepip (Debian's python3 without python3-venv) pip comes from its carried wheel.
venv="$root/build/gpu-venv"
rm -rf "$venv"
if ! "${PYTHON:-python3}" -m venv --system-site-packages "$venv" 2>/dev/null; then
  say "no ensurepip: bootstrapping pip from the carried wheel"
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv --system-site-packages --without-pip "$venv" || exit 1
  pip_whl=$(ls "$carry"/wheels/pip-*.whl)
  "$venv/bin/python" "$pip_whl/pip" install -q --no-index "$pip_whl" || exit 1
fi
py="$venv/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check --no-index --find-links "$carry/wheels")
step "install the carried wheels" 120 "${pip[@]}" -r "$carry/requirements.txt" || finish
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # mesh-llm itself runs from the tree
step "import what the check needs" 60 "$py" -c 'import numpy, jinja2, gguf, fastapi, uvicorn, cryptography, aioquic, qh3, diskcache, httpx, psutil, rich, huggingface_hub, zeroconf, nostr_sdk, fnv_c, scikit_build_core; import mesh_llm.planning.placement, tests.gguf_fixtures' || finish

# What the build leaves out, and why the figures stay the same:
#  - CMAKE_CUDA_ARCHITECTURES=native: device code for the GPU present only (one arch, not ~8);
#  - GGML_CUDA_FA=off: the flash-attention kernels compile to empty stubs. The engine creates every
#    context with flash attention disabled (engine/_llama.py) and llama-cpp-python's Llama, the
#    baseline, defaults to flash_attn=False, so no measured graph contains a FLASH_ATTN_EXT op;
#  - GGML_CUDA_FA_QUANTS=f16-f16: fewer of those stub files (f16 is the KV cache type used);
#  - LLAVA_BUILD=off: no libmtmd (multimodal), which mesh-llm never loads;
#  - llama.cpp's tests, examples, tools and server are off (the defaults for a subproject).
# Kept: GGML_NATIVE (the CPU figure needs the CPU's own SIMD), the mmq and cuBLAS paths, CUDA graphs.
cmake_args="-DGGML_CUDA=on -DGGML_RPC=on -DCMAKE_CUDA_ARCHITECTURES=native -DGGML_CUDA_FA=off"
cmake_args+=" -DGGML_CUDA_FA_QUANTS=f16-f16 -DLLAVA_BUILD=off -DLLAMA_BUILD_TESTS=off"
cmake_args+=" -DLLAMA_BUILD_EXAMPLES=off -DLLAMA_BUILD_TOOLS=off -DLLAMA_BUILD_SERVER=off"

if [ $rehearse = 1 ]; then
  # The same configuration with CUDA swapped for the CPU, so a fake nvcc suffices: proves the
  # trimmed tree still has every directory CMake reads.
  src=$(mktemp -d)
  tar -C "$src" -xzf "$sdist"
  step "configure the trimmed sdist (CPU, rehearsal)" 120 cmake -S "$src/llama_cpp_python-$LLAMA_VERSION" \
    -B "$src/build" -G Ninja -DGGML_RPC=on -DLLAVA_BUILD=off -DLLAMA_BUILD_TESTS=off \
    -DLLAMA_BUILD_EXAMPLES=off -DLLAMA_BUILD_TOOLS=off -DLLAMA_BUILD_SERVER=off >"$src/configure.log" 2>&1 ||
    tail -20 "$src/configure.log"
  rm -rf "$src"
  say "rehearsal: stopping before the CUDA build"
  finish
fi

# A wheel built by an earlier run is reused: from this machine's build/ (same lease), or carried
# in $carry/built/ (a later lease). CMake's build folder stays too, so a build the deadline cut
# short goes on where it stopped.
wheels="$root/build/gpu-wheels"
mkdir -p "$wheels"
cp "$carry"/built/llama_cpp_python-*.whl "$wheels/" 2>/dev/null
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    step "build llama-cpp-python $LLAMA_VERSION: $cmake_args" 330 \
    "$py" -m pip wheel -q --no-index --no-deps --no-build-isolation -w "$wheels" \
    --config-settings=build-dir="$root/build/gpu-llama-build" "$sdist" || finish
  # Small enough to come back with the log? Then a later lease can carry it instead of building.
  whl=$(ls "$wheels"/llama_cpp_python-*.whl)
  [ "$(stat -c %s "$whl")" -lt $((40 * 1048576)) ] && cp "$whl" "$out/"
fi
step "install the CUDA wheel" 60 "${pip[@]}" --no-deps --force-reinstall "$wheels"/llama_cpp_python-*.whl || finish
step "the wheel offloads and speaks RPC" 30 "$py" -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() and llama_cpp.llama_supports_rpc() else 1)' || finish
step "mesh-llm gpus" 30 "$py" -m mesh_llm gpus

model="$root/build/gpu-check-random.gguf"
[ -f "$model" ] || step "write a ~1 GB random-weight GGUF" 60 "$py" -m benchmarks.gpu_check model "$model" || finish
step "solo on CUDA0: layers, prefill, decode" 60 "$py" -m benchmarks.gpu_check solo "$model" CUDA0 256 "$out/solo-gpu.json"
step "solo on the CPU" 90 "$py" -m benchmarks.gpu_check solo "$model" CPU 32 "$out/solo-cpu.json"
[ -f "$out/solo-gpu.json" ] && [ -f "$out/solo-cpu.json" ] &&
  step "GPU against CPU" 10 "$py" -m benchmarks.gpu_check compare "$out/solo-gpu.json" "$out/solo-cpu.json"
step "llama-cpp-python's Llama on CUDA0 (the 0.95x goal)" 60 "$py" -m benchmarks.gpu_check llama "$model" CUDA0 256
step "1 stream on CUDA0" 45 "$py" -m benchmarks.gpu_check streams "$model" CUDA0 1 128
step "4 streams on CUDA0" 45 "$py" -m benchmarks.gpu_check streams "$model" CUDA0 4 128

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$py" -m mesh_llm.serving.rpc.worker_main --port "$port" --device CUDA0 >"$out/rpc-worker.log" 2>&1 &
worker=$!
trap 'kill "$worker" 2>/dev/null' EXIT
sleep 3
step "2-node split: host layers and an RPC worker both on CUDA0" 120 "$py" - "$model" "$port" <<'PY'
import sys, time
from gguf import GGUFReader
from mesh_llm.planning.placement import parse_placement
from mesh_llm.serving.rpc.host_split import LlamaLogCapture, prepare_host_split
from mesh_llm.serving.engine._llama import Batch, Context, Model
path, port = sys.argv[1], sys.argv[2]
reader = GGUFReader(path)
arch = reader.get_field("general.architecture").contents()
n_layers = int(reader.get_field(f"{arch}.block_count").contents())
host, worker = n_layers // 2, n_layers - n_layers // 2
split = prepare_host_split([f"127.0.0.1:{port}"], [host, worker], host_gpus=[("CUDA0", 1)])
capture = LlamaLogCapture()
model = Model(path, n_gpu_layers=split.offload.n_gpu_layers, tensor_split=list(split.offload.tensor_split))
placement = parse_placement(capture.finish())
split.check(placement)
print("placement:", placement.ranges(), "output on", placement.output_device)
ctx = Context(model, n_seq=1, n_ctx_seq=256, n_batch=64, n_threads=8, n_threads_batch=16)
b = Batch(64); b.add(1, 0, 0, logits=True); ctx.decode(b)
t = time.perf_counter()
for pos in range(1, 65):
    b.clear(); b.add(int(ctx.logits(0).argmax()), pos, 0, logits=True); ctx.decode(b)
print(f"split (host {host} layers on CUDA0, RPC worker on CUDA0 {worker}): {64 / (time.perf_counter() - t):.1f} tok/s")
PY
kill "$worker" 2>/dev/null
finish
