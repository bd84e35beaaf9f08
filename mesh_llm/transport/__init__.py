"""The authenticated QUIC layer of the mesh: listen, dial, authenticate, one link per peer.

The package, one module a concern:
  _handshake   mesh authentication as a pure state machine (messages in, messages and a verdict out)
  _credit      per-stream credit accounting (pure)
  _state       a connection's states and the transitions allowed between them (pure)
  _streams     mesh streams: readers and writers over one QUIC stream each
  _demux       a connection's data streams: open frames, routing stream events
  _adapter     the asyncio adapter under a connection: datagrams in and out, QUIC's timer
  _liveness    keepalive pings, RTT samples, probes
  _connection  one QUIC connection: authentication inbox, control stream, data streams
  _link        PeerLink, the public face of an authenticated connection
  _links       one link per peer: links, dials under way, who wins a race
  _dial        dialing one address, racing several, reporting why a dial failed
  _listener    the listening socket: routing datagrams by connection id, address probes
  _relay       a relayed path: QUIC packets framed on a mesh stream, copied by a relay
  _relaying    dialing through a relay, relaying, accepting through one
  _retire      a link replaced by a better path: its streams finish, then it closes
  _endpoint    MeshTransport: start and stop, dialing, accepting, installing links
  _tasks       background tasks and callbacks, stream handlers
  _udp         sockets, bursts, and the datagram size for each path
  _compat      the QUIC engines (qh3, aioquic) and every workaround for their private parts
  _config      TransportConfig
  _codes       close and stream error codes
"""

from mesh_llm.transport._codes import CloseCode, StreamCode
from mesh_llm.transport._compat import ALPN, DEFAULT_ENGINE, ENGINES
from mesh_llm.transport._config import TransportConfig
from mesh_llm.transport._endpoint import MeshTransport
from mesh_llm.transport._link import PeerLink
from mesh_llm.transport._streams import MeshStreamReader, MeshStreamWriter, StreamSink
from mesh_llm.transport._tasks import MessageHandler, StreamHandler

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
