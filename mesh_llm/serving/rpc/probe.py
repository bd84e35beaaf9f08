"""A deadline-bound probe of a ggml RPC server: the protocol's HELLO, nothing more.

llama.cpp's own RPC client has no timeouts and aborts the process on failure, so nothing
connects to a worker before this probe has seen it answer.
"""

from __future__ import annotations

import socket
import struct
import time

from mesh_llm.errors import BackendError, BackendUnavailable
from mesh_llm.planning.placement import parse_endpoint

__all__ = ["RPC_PROTO_MAJOR", "probe_rpc_server"]

RPC_PROTO_MAJOR = 7  # the protocol this module's probe speaks; the server refuses other majors
_CMD_HELLO = 14  # fixed across protocol versions by a static_assert in ggml-rpc.cpp
_CONN_CAPS_SIZE = 24  # rpc_msg_hello_req: uint8_t conn_caps[24]


def probe_rpc_server(endpoint: str, timeout: float = 5.0) -> tuple[int, int, int]:
    """Open a connection, exchange HELLO, close; return the server's protocol version.

    Raises BackendUnavailable when nothing answers within ``timeout`` (refused, busy with
    another client -- a worker serves one client at a time -- or silent), and BackendError when
    the server speaks another major protocol version.
    """
    host, port = parse_endpoint(endpoint)
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            reply = b""
            want = 8 + 4 + _CONN_CAPS_SIZE
            while len(reply) < want:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(want - len(reply))
                if not chunk:
                    raise BackendUnavailable(f"RPC worker {endpoint} closed the connection during HELLO")
                reply += chunk
    except TimeoutError as exc:
        raise BackendUnavailable(f"RPC worker {endpoint} did not answer HELLO within {timeout:g} s") from exc
    except OSError as exc:
        raise BackendUnavailable(f"RPC worker {endpoint} is not reachable: {exc.strerror or exc}") from exc
    (size,) = struct.unpack_from("<Q", reply)
    major, minor, patch = reply[8], reply[9], reply[10]
    if size != 4 + _CONN_CAPS_SIZE or major != RPC_PROTO_MAJOR:
        raise BackendError(
            f"RPC worker {endpoint} speaks protocol {major}.{minor}.{patch}, not {RPC_PROTO_MAJOR}.x"
        )
    return major, minor, patch
