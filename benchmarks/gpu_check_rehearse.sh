#!/usr/bin/env bash
# Rehearse benchmarks/gpu_check.sh here, without a GPU, so the first device run cannot fail on a
# missing file or wheel:
#   1. a stand-in for the GPU machine: a Python 3.12 (a hard-linked copy of pyenv's, so installing
#      into it touches nothing shared) given only what that machine has (numpy, jinja2,
#      scikit-build-core; CMake and ninja from here), and a fake nvcc and nvidia-smi on PATH;
#   2. gpu_check.sh --rehearse with it: the carried files' checksums, every wheel into a fresh venv
#      with --no-index, the imports, a CMake configure of the trimmed sdist; it stops before CUDA;
#   3. the check's own Python (benchmarks/gpu_check.py) on the CPU in the project's .venv with a
#      small random model: the working tree's imports and the measuring code run.
# Usage: bash benchmarks/gpu_check_rehearse.sh [CARRY_DIR=build/gpu-carry]   (run prepare first)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
carry=${1:-$root/build/gpu-carry}
base=${PYTHON312_HOME:-$HOME/.pyenv/versions/3.12.1}
say() { printf '[rehearse] %s\n' "$*" >&2; }
[ -x "$base/bin/python3.12" ] || { say "no Python 3.12 at $base (set PYTHON312_HOME)"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work" "$root/build/gpu-venv"' EXIT  # that venv points into $work

mkdir -p "$work/fake"
cat >"$work/fake/nvcc" <<'SH'
#!/bin/sh
echo "nvcc: NVIDIA (R) Cuda compiler driver"
echo "Cuda compilation tools, release 13.0, V13.0.88"
echo "Build cuda_13.0.r13.0/compiler.36424714_0"
SH
cat >"$work/fake/nvidia-smi" <<'SH'
#!/bin/sh
case "$*" in
  *--query-gpu*) echo "NVIDIA H100 80GB HBM3, 580.95.05, 81559 MiB, 9.0" ;;
  *) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)" ;;
esac
SH
chmod +x "$work/fake/nvcc" "$work/fake/nvidia-smi"

say "a stand-in machine Python from $base"
cp -al "$base" "$work/machine"
rm -f "$work/machine/lib/python3.12/EXTERNALLY-MANAGED"
# Ubuntu 24.04's versions, the oldest the machine may hold.
"$work/machine/bin/python3.12" -m pip install -q --disable-pip-version-check \
  "numpy==1.26.4" "jinja2==3.1.2" "markupsafe==2.1.5" scikit-build-core 2>&1 | grep -v "^WARNING: Location" || true
ln -s python3.12 "$work/machine/bin/python3" 2>/dev/null || true

say "gpu_check.sh --rehearse"
PATH="$work/fake:$work/machine/bin:$PATH" PYTHON="$work/machine/bin/python3" OUT="$work/out" DEADLINE_S=400 \
  bash "$root/benchmarks/gpu_check.sh" --rehearse "$carry"
say "the installed versions: $("$root/build/gpu-venv/bin/python" -m pip list --format=freeze 2>/dev/null | tr '\n' ' ')"

say "every carried wheel, dependencies or not, into a bare 3.12 venv (no system packages)"
"$base/bin/python3.12" -m venv "$work/bare"
"$work/bare/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps "$carry"/wheels/*.whl
say "$(ls "$carry"/wheels/*.whl | wc -l) wheels installed"

say "the check's Python on the CPU (.venv, a small random model)"
py="$root/.venv/bin/python"
cd "$root"
"$py" -c "from pathlib import Path; from tests.gguf_fixtures import write_wide_llama_gguf; write_wide_llama_gguf(Path('$work/small.gguf'), n_layers=2, n_embd=256)"
quiet() { "$@" 2>"$work/stderr" || { tail -20 "$work/stderr" >&2; return 1; }; }
quiet "$py" -m benchmarks.gpu_check solo "$work/small.gguf" CPU 32 "$work/a.json"
quiet "$py" -m benchmarks.gpu_check solo "$work/small.gguf" CPU 32 "$work/b.json"
quiet "$py" -m benchmarks.gpu_check compare "$work/a.json" "$work/b.json"
quiet "$py" -m benchmarks.gpu_check llama "$work/small.gguf" CPU 32
quiet "$py" -m benchmarks.gpu_check streams "$work/small.gguf" CPU 4 16
say "rehearsal passed"
