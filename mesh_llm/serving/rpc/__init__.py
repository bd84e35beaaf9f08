"""llama.cpp's RPC backend, process by process: what a split's workers and its host run.

`supervisor.RpcWorker` supervises one ggml RPC-server subprocess (`worker_main`), which serves
through the ctypes bindings in `ggml`; `cache` pre-fills its tensor cache and reads GGUF headers;
`probe` checks a worker answers before anything connects; `host_split` is the host's model server
attaching its workers and reading back where llama.cpp placed the layers. Who hosts and who works
for whom is decided across the mesh in `mesh_llm.split`.
"""
