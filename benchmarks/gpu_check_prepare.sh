#!/usr/bin/env bash
# Run on a machine WITH registry access. Fills ONE folder with everything benchmarks/gpu_check.sh
# needs on the GPU machine, which reaches no registry (DESIGN.md, "The GPU machine"):
#   wheels/       cp312 manylinux x86_64 wheels for mesh-llm's runtime dependencies (pyproject's,
#                 llama-cpp-python's own and its [server] extra's, all transitively), minus what the
#                 machine already has (MACHINE_HAS), plus pip itself in case its venv comes without
#                 (the sdist's build requirements too: it builds with --no-build-isolation);
#   requirements.txt  the top-level list those wheels were resolved from;
#   llama_cpp_python-VERSION.tar.gz  the sdist without what no build here reads (its git
#                 history, vocab GGUFs, docs, tests, benches, tools, other backends): 76.6 MB -> a few MB;
#   SHA256SUMS    what gpu_check.sh verifies before it starts.
# The folder sits under build/ (ignored by git) and travels as the `run` tool's `carry`; the
# script prints its size together with the working tree's and fails over the 64 MiB limit.
# Usage: bash benchmarks/gpu_check_prepare.sh [CARRY_DIR=build/gpu-carry]
#   env PYTHON (a Python with pip; default .venv/bin/python), PYTHON_VERSION (default 3.12),
#   MACHINE_HAS (distributions the GPU machine has; "" carries them too).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
carry=${1:-$root/build/gpu-carry}
pyver=${PYTHON_VERSION:-3.12}
py=${PYTHON:-$root/.venv/bin/python}
# numpy and the build tools are big and there; the small pure ones (jinja2, scikit-build-core)
# travel anyway, in case the venv does not see the machine's: pip skips them when it does.
machine_has=${MACHINE_HAS-numpy cmake ninja}
LLAMA_VERSION="0.3.36"
LIMIT_MIB=64
say() { printf '[prepare] %s\n' "$*" >&2; }

rm -rf "$carry"
mkdir -p "$carry/wheels"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "llama-cpp-python $LLAMA_VERSION sdist"
"$py" -m pip download -q --no-deps --no-binary=:all: --dest "$work" "llama-cpp-python==$LLAMA_VERSION"
tar -C "$work" -xzf "$work/llama_cpp_python-$LLAMA_VERSION.tar.gz"
src="$work/llama_cpp_python-$LLAMA_VERSION"

# pyproject's dependencies with llama-cpp-python[server] replaced by what its sdist declares (it
# is built there, not installed from a wheel: its runtime, [server] and build requirements), less
# what the machine has.
"$py" - "$root/pyproject.toml" "$src/pyproject.toml" "$machine_has" >"$carry/requirements.txt" <<'PY'
import re, sys, tomllib
ours, theirs, has = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
def name(req):
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1)).lower()
llama = tomllib.load(open(theirs, "rb"))["project"]
reqs = []
for req in tomllib.load(open(ours, "rb"))["project"]["dependencies"]:
    if name(req) == "llama-cpp-python":
        extras = re.findall(r"\[([^\]]*)\]", req)
        reqs += llama["dependencies"] + tomllib.load(open(theirs, "rb"))["build-system"]["requires"]
        for extra in (extras[0].split(",") if extras else []):
            reqs += llama["optional-dependencies"][extra.strip()]
    else:
        reqs.append(req)
seen = set()
for req in reqs:
    if name(req) not in has and name(req) not in seen:
        seen.add(name(req))
        print(req)
PY
say "wheels for cp${pyver/./}: $(tr '\n' ' ' <"$carry/requirements.txt")"
plat=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
"$py" -m pip download -q --dest "$carry/wheels" --only-binary=:all: --python-version "$pyver" \
  --implementation cp "${plat[@]}" -r "$carry/requirements.txt" pip
# Transitive dependencies the machine has (numpy through gguf, say) stay behind too.
for dist in $machine_has; do
  pattern=$(echo "$dist" | tr '-' '_')
  find "$carry/wheels" -maxdepth 1 -iname "${pattern}-[0-9]*.whl" -print -delete | sed 's/^/[prepare] left out (the machine has it): /' >&2
done

# Nothing the build reads: llama.cpp's tests, examples and tools are off when it is a subproject
# (mtmd, the one tool llama-cpp-python adds, stays), and only the CPU, CUDA and RPC backends build.
say "trimming the sdist"
v="$src/vendor/llama.cpp"
rm -rf "$src/.git" "$src/.github" "$src/docs" "$src/tests" "$src/examples" "$src/docker" \
  "$v/tools/mtmd"/test-* "$v/tools/mtmd/tests" \
  "$v/models" "$v/docs" "$v/tests" "$v/benches" "$v/examples" "$v/media" "$v/.github" "$v/.devops" \
  "$v/gguf-py" "$v/conversion" "$v/scripts" "$v/pocs" "$v/ci" "$v/skills" "$v/requirements" "$v/grammars"
find "$v/tools" -mindepth 1 -maxdepth 1 ! -name mtmd ! -name CMakeLists.txt -exec rm -rf {} +
for backend in cann et hexagon metal musa opencl openvino sycl virtgpu vulkan webgpu zdnn zendnn; do
  rm -rf "$v/ggml/src/ggml-$backend"
done
tar -C "$work" -czf "$carry/llama_cpp_python-$LLAMA_VERSION.tar.gz" "llama_cpp_python-$LLAMA_VERSION"

(cd "$carry" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum >SHA256SUMS)

# The `run` tool carries the working tree (tracked files and untracked ones git does not ignore)
# plus this folder.
tree_bytes=$(cd "$root" && git ls-files -z --cached --others --exclude-standard |
  xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
carry_bytes=$(find "$carry" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total=$((tree_bytes + carry_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
say "$(find "$carry/wheels" -name '*.whl' | wc -l) wheels $(mib "$(du -sb "$carry/wheels" | cut -f1)"), sdist $(mib "$(stat -c %s "$carry/llama_cpp_python-$LLAMA_VERSION.tar.gz")")"
say "total $(mib "$total"): $carry $(mib "$carry_bytes") + working tree $(mib "$tree_bytes") (limit $LIMIT_MIB MiB)"
[ "$total" -le $((LIMIT_MIB * 1048576)) ] || { say "over the $LIMIT_MIB MiB a device command may carry" ; exit 1; }
