"""The authenticated QUIC layer of the mesh: listen, dial, authenticate, one link per peer.

The package, one module a concern:
  _handshake   mesh authentication as a pure state machine (messages in, messages and a verdict out)
  _credit      per-stream credit accounting (pure)
  _streams     mesh streams: readers and writers over one QUIC stream each
  _connection  one QUIC connection: the asyncio adapter, control stream, keepalive, PeerLink
  _endpoint    MeshTransport: the listener, dialing, accepting, one link per peer
  _udp         sockets, bursts, and the datagram size for each path
  _compat      the QUIC engines (qh3, aioquic) and every workaround for their private parts
  _config      TransportConfig
  _codes       close and stream error codes
"""

from mesh_llm.transport._codes import CloseCode, StreamCode
from mesh_llm.transport._compat import ALPN, DEFAULT_ENGINE, ENGINES
from mesh_llm.transport._config import TransportConfig
from mesh_llm.transport._connection import PeerLink
from mesh_llm.transport._endpoint import MeshTransport, MessageHandler, StreamHandler
from mesh_llm.transport._streams import MeshStreamReader, MeshStreamWriter, StreamSink

__all__ = [
    "ALPN",
    "DEFAULT_ENGINE",
    "ENGINES",
    "CloseCode",
    "MeshStreamReader",
    "MeshStreamWriter",
    "MeshTransport",
    "MessageHandler",
    "PeerLink",
    "StreamCode",
    "StreamHandler",
    "StreamSink",
    "TransportConfig",
]
