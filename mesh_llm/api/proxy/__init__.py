"""The OpenAI-compatible API on :9337: routes each request by its `model` field to a host.

The package, one module a concern:
  _proxy       Proxy: the app's routes, and each request read, routed, forwarded and answered
  _relay       StreamRelay: a host's SSE answer passed through, ended cleanly if it breaks off
  _translated  translated_events: a relayed chat stream in another API's events
  _access_log  AccessLogged: the access line of requests the proxy does not answer itself
"""

from mesh_llm.api.proxy._proxy import Proxy, ServingView
from mesh_llm.api.proxy._translated import translated_events

__all__ = ["Proxy", "ServingView", "translated_events"]
