"""NAT traversal: members that cannot reach each other still link, punched or relayed.

_interfaces  this machine's own addresses
_messages    the traversal messages between members and their total parsers (pure)
_observed    what peers observe of our listening socket, and the NAT kind it shows (pure)
_traversal   probes, punches, relays and upgrades: the node's side of it
"""

from mesh_llm.mesh.nat._interfaces import local_addresses
from mesh_llm.mesh.nat._messages import KINDS as MESSAGE_KINDS
from mesh_llm.mesh.nat._observed import NatView
from mesh_llm.mesh.nat._traversal import NatTimings, Traversal

__all__ = ["MESSAGE_KINDS", "NatTimings", "NatView", "Traversal", "local_addresses"]
