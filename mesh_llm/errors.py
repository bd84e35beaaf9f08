"""The one error tree of mesh-llm.

    MeshError
     ├── ConfigError            bad flags or settings given at the edge
     │    └── TokenError         a malformed, truncated or foreign invite token
     ├── ModelError
     │    ├── UnknownModelError  a name that is neither a catalog entry nor a .gguf path
     │    ├── DownloadError      fetching weights from the hub failed
     │    └── GGUFError          a file that is not a readable GGUF
     ├── WireError              a frame that cannot be decoded
     │    ├── FrameTooLarge
     │    └── MalformedFrame
     ├── TransportError         QUIC-level failures (the one seam that translates socket/TLS errors)
     │    ├── AuthenticationError  peer lacks the mesh secret or proved the wrong node id
     │    └── PeerUnreachable      no address answered before the deadline
     ├── BackendError           model server / RPC worker subprocess trouble
     │    └── BackendUnavailable   not ready yet, crashed, or restarting
     ├── RequestRejected        a request that cannot be taken as sent (carries its HTTP status)
     ├── RoutingError           the proxy could not place a request
     │    ├── ModelNotFound        nobody in the mesh serves or knows that model
     │    └── NoHealthyHost        the model is known but no host can take the request now
     └── DiscoveryError         no relay or LAN answer where one was needed
          └── ListingError         a mesh listing that is unsigned, expired, malformed or lies

Foreign exceptions are translated into these at exactly one seam per subsystem. Every error
that reaches HTTP is turned into one OpenAI-style error body in one place, `mesh_llm.http_errors`,
which every FastAPI app of the node installs (the proxy, the console and its control routes,
the model-server child).
"""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error mesh-llm raises on purpose."""


class ConfigError(MeshError):
    """A flag, setting or argument that cannot be used."""


class TokenError(ConfigError):
    """An invite token that cannot be decoded or does not belong to this mesh."""


class ModelError(MeshError):
    """A model cannot be resolved, fetched or read."""


class UnknownModelError(ModelError):
    """A model name that is neither in the catalog nor a path to a .gguf file."""


class DownloadError(ModelError):
    """Downloading a model from the hub failed."""


class GGUFError(ModelError):
    """A file that is not a readable GGUF model."""


class WireError(MeshError):
    """Bytes that cannot be decoded into a frame or message."""


class FrameTooLarge(WireError):
    """A frame whose declared length exceeds the limit."""


class MalformedFrame(WireError):
    """A frame whose header or payload is not valid."""


class TransportError(MeshError):
    """A QUIC connection or stream failed."""


class AuthenticationError(TransportError):
    """A peer failed mutual authentication (wrong secret, wrong node id, bad signature)."""


class PeerUnreachable(TransportError):
    """No address of a peer answered before the deadline."""


class BackendError(MeshError):
    """A model server or RPC worker subprocess failed."""


class BackendUnavailable(BackendError):
    """The backend is not ready: loading, crashed or restarting."""


class RequestRejected(MeshError):
    """A request that cannot be taken as sent: its HTTP status and OpenAI error fields go with it."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str = "invalid_value",
        status: int = 400,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.retry_after_s = retry_after_s


class RoutingError(MeshError):
    """A request could not be placed on a host."""


class ModelNotFound(RoutingError):
    """No node in the mesh serves or knows the requested model."""

    def __init__(self, model: str, available: list[str]) -> None:
        self.model = model
        self.available = sorted(available)
        listing = ", ".join(self.available) if self.available else "none"
        super().__init__(f"The model '{model}' does not exist in this mesh. Available models: {listing}.")


class NoHealthyHost(RoutingError):
    """The model is known but no host can take the request right now."""

    def __init__(self, model: str, reason: str = "", retry_after_s: int = 5) -> None:
        self.model = model
        self.retry_after_s = retry_after_s
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"The model '{model}' is not ready to serve requests{detail}. Retry in {retry_after_s} s."
        )


class DiscoveryError(MeshError):
    """Publishing or finding meshes failed: no Nostr relay answered, or the LAN could not be used."""


class ListingError(DiscoveryError):
    """A mesh listing that is ignored: bad signature, expired, malformed, or a token that does not decode."""
