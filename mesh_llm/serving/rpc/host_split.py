"""The host's side of a split, in the model-server process: before and after llama.cpp loads.

:func:`prepare_host_split` probes and attaches the RPC workers and makes the next
``llama_cpp.Llama`` use exactly them (a hook on ``llama_model_default_params``);
:class:`LlamaLogCapture` records llama.cpp's load log so the placement can be read back;
:func:`watch_rpc_connections` reports a worker's connection closing at once.
"""

from __future__ import annotations

import ctypes
import select
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mesh_llm.errors import ConfigError
from mesh_llm.planning.offload import split_host_offload
from mesh_llm.planning.placement import HostSplit, offload_settings, parse_endpoint
from mesh_llm.serving.rpc.ggml import attach_rpc_devices, buffer_type, cpu_buffer_type
from mesh_llm.serving.rpc.probe import probe_rpc_server

__all__ = ["OUTPUT_TENSOR_PATTERN", "LlamaLogCapture", "prepare_host_split", "watch_rpc_connections"]

# The output head's weights. A model with tied embeddings loads token_embd.weight a second time
# as its output weight, under the token_embd name; the input copy is on the CPU anyway. On a GPU
# the input table is left out unless it is the head too (it would cost memory nobody counted).
OUTPUT_TENSOR_PATTERN = r"^(output|output_norm|token_embd)\."
UNTIED_OUTPUT_PATTERN = r"^(output|output_norm)\."


class _BuftOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]  # llama_model_tensor_buft_override


_params_hook_refs: list[Any] = []  # ctypes arrays llama.cpp points into: must outlive the model


def prepare_host_split(
    endpoints: Sequence[str],
    layer_split: Sequence[int],
    *,
    n_layers: int | None = None,
    output_on_host: bool = True,
    probe_timeout: float = 10.0,
    host_gpus: Sequence[tuple[str, int]] = (),
    tied_embeddings: bool = True,
) -> HostSplit:
    """Probe and attach the RPC workers and make the next ``llama_cpp.Llama`` use exactly them.

    ``layer_split`` is host first, then one count per endpoint, in the same order; it must
    sum to the model's layer count (checked here when ``n_layers`` is given, and always by
    :meth:`HostSplit.check` after loading). Call in the model-server process before the model
    is constructed. Installs a hook on ``llama_model_default_params`` (which ``Llama.__init__`` calls) that
    sets ``devices`` to our RPC devices in plan order and, with ``output_on_host``, a buffer-type
    override keeping the output head on the host CPU. llama-cpp-python's own ``rpc_servers``
    setting is accepted but ignored by ``Llama`` in 0.3.36, and llama.cpp's default device list
    would add any local GPU after the RPC devices; explicit devices avoid both.

    With ``host_gpus`` (``(ggml name, free bytes)`` such as ``("CUDA0", ...)``) the host's own
    layers go on those GPUs, divided by free memory and listed ahead of the RPC devices, and its
    output head on the first of them, instead of on its CPU. ``tied_embeddings`` says whether
    the model's output head is its input embedding table (no ``output.weight``).
    """
    counts = tuple(int(c) for c in layer_split)
    if len(counts) != len(endpoints) + 1:
        raise ConfigError(
            f"layer split {counts} needs {len(endpoints) + 1} counts: the host's, then one per RPC worker"
        )
    if n_layers is not None and sum(counts) != n_layers:
        raise ConfigError(f"layer split {counts} covers {sum(counts)} layers; the model has {n_layers}")
    from mesh_llm.serving.devices import device_handle

    host = [device_handle(name) for name, _ in host_gpus]  # an unknown GPU fails before any dial
    on_gpu = split_host_offload(host_gpus, counts, output_on_host=output_on_host) if host_gpus else None
    offload = (
        on_gpu.settings if on_gpu is not None else offload_settings(counts, output_on_host=output_on_host)
    )
    for endpoint in endpoints:
        probe_rpc_server(endpoint, probe_timeout)
    devices = attach_rpc_devices(endpoints)

    from llama_cpp import llama_cpp as llama_c

    handles = [*host, *[d.handle for d in devices]]
    dev_array = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)
    head_buffer = buffer_type(host[0]) if host else cpu_buffer_type()
    pattern = UNTIED_OUTPUT_PATTERN if host and not tied_embeddings else OUTPUT_TENSOR_PATTERN
    overrides = (_BuftOverride * 2)(_BuftOverride(pattern.encode(), head_buffer), _BuftOverride(None, None))
    original = llama_c.llama_model_default_params

    def params_with_devices() -> Any:
        params = original()
        params.devices = ctypes.cast(dev_array, ctypes.c_void_p)
        if output_on_host:
            params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
        return params

    _params_hook_refs[:] = [dev_array, overrides, original]
    llama_c.llama_model_default_params = params_with_devices
    if on_gpu is None:
        return HostSplit(tuple(endpoints), counts, offload, tuple(devices))
    return HostSplit(
        tuple(endpoints), counts, offload, tuple(devices), on_gpu.host_devices, on_gpu.host_counts
    )


class LlamaLogCapture:
    """Record llama.cpp's log lines (debug included) while passing them to llama-cpp-python's
    own handler, which prints them or not by its verbosity. Needed to read the placement."""

    def __init__(self) -> None:
        import llama_cpp._logger as llama_logger
        from llama_cpp import llama_cpp as llama_c

        self._lines: list[str] | None = []
        forward = llama_logger.llama_log_callback

        @llama_c.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if self._lines is not None:
                self._lines.append(text.decode("utf-8", errors="replace"))
            forward(level, text, user_data)

        self._callback = callback  # ctypes callbacks must stay referenced while installed
        self._forward = forward
        llama_c.llama_log_set(callback, ctypes.c_void_p(0))

    def finish(self) -> str:
        """Stop recording, give logging back to llama-cpp-python's handler; return the text."""
        from llama_cpp import llama_cpp as llama_c

        llama_c.llama_log_set(self._forward, ctypes.c_void_p(0))
        text = "".join(self._lines or [])
        self._lines = None
        return text


def watch_rpc_connections(
    endpoints: Sequence[str], on_lost: Callable[[str], None], interval: float = 0.5
) -> threading.Thread:
    """Call ``on_lost(endpoint)`` as soon as this process's connection to a worker closes.

    llama.cpp only notices a dead worker at its next RPC call, by aborting. Watching the
    sockets (no data is read: only hang-up conditions are polled) turns a worker crash, or a
    tunnel closing its local end, into a report at once, even while idle. Call after the model
    has loaded, when the connections are the ones llama.cpp keeps (one per endpoint).
    Endpoints must be numeric ``IP:PORT``, as they are compared with the sockets' peers.
    """
    import psutil

    wanted = {parse_endpoint(e): e for e in endpoints}
    fds: dict[int, str] = {}
    for conn in psutil.Process().net_connections(kind="tcp"):
        if (
            conn.raddr
            and (conn.raddr.ip, conn.raddr.port) in wanted
            and conn.status == psutil.CONN_ESTABLISHED
        ):
            fds[conn.fd] = wanted[(conn.raddr.ip, conn.raddr.port)]
    missing = set(endpoints) - set(fds.values())

    def watch() -> None:
        if missing:
            on_lost(sorted(missing)[0])
            return
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        while True:  # the timeout only bounds each wait; hang-ups wake the poll at once
            for fd, _event in poller.poll(int(interval * 1000)):
                on_lost(fds[fd])
                return

    thread = threading.Thread(target=watch, name="rpc-connection-watch", daemon=True)
    thread.start()
    return thread
