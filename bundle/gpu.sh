# GPU backend selection for llama-cpp-python's build; sourced by setup.sh and gpu_check.sh.
# Kept free of side effects so tests can source it and call the functions with fake toolchains.
#   gpu_backend            prints cpu|cuda|metal|vulkan|rocm
#   gpu_cmake_args NAME    prints the CMake flags for that backend (RPC is added by the caller)
#   gpu_lib_glob NAME      prints the shared-library glob that proves the backend was built

# A compiler alone is not a GPU: this CI machine has nvcc but no GPU, and must build for the CPU.
_nvidia_gpu_present() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    return 0
  fi
  [ -e "${MESH_LLM_DEV_DIR:-/dev}/nvidia0" ]
}

_amd_gpu_present() {
  if command -v rocminfo >/dev/null 2>&1 && rocminfo 2>/dev/null | grep -q 'gfx'; then
    return 0
  fi
  [ -e "${MESH_LLM_DEV_DIR:-/dev}/kfd" ]
}

_vulkan_sdk_present() {
  command -v glslc >/dev/null 2>&1 || return 1
  command -v vulkaninfo >/dev/null 2>&1 || return 1
  [ -f "${VULKAN_SDK:-/usr}/include/vulkan/vulkan.h" ] || return 1
  vulkaninfo --summary >/dev/null 2>&1
}

gpu_backend() {
  local forced="${MESH_LLM_GPU:-}"
  if [ -n "$forced" ]; then
    case "$forced" in
      cpu | cuda | metal | vulkan | rocm) echo "$forced"; return 0 ;;
      *) echo "MESH_LLM_GPU must be cpu, cuda, metal, vulkan or rocm, not '$forced'" >&2; return 2 ;;
    esac
  fi
  if [ "$(uname -s)" = "Darwin" ]; then
    echo metal
  elif command -v nvcc >/dev/null 2>&1 && _nvidia_gpu_present; then
    echo cuda
  elif command -v hipcc >/dev/null 2>&1 && _amd_gpu_present; then
    echo rocm
  elif _vulkan_sdk_present; then
    echo vulkan
  else
    echo cpu
  fi
}

gpu_cmake_args() {
  case "$1" in
    cpu) echo "" ;;
    cuda) echo "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:-native}" ;;
    metal) echo "-DGGML_METAL=on" ;;
    vulkan) echo "-DGGML_VULKAN=on" ;;
    rocm) echo "-DGGML_HIP=on" ;;
    *) echo "unknown GPU backend '$1'" >&2; return 2 ;;
  esac
}

gpu_lib_glob() {
  case "$1" in
    cpu) echo "libggml-cpu*" ;;
    cuda) echo "libggml-cuda*" ;;
    metal) echo "libggml-metal*" ;;
    vulkan) echo "libggml-vulkan*" ;;
    rocm) echo "libggml-hip*" ;;
    *) return 2 ;;
  esac
}
