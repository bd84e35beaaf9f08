"""What one peer is and how it speaks, below the transport and the mesh alike.

`identity` (a node's Ed25519 key and self-signed certificate), `token` (the mesh's invite token:
its secret, its id and the addresses it names), `wire` (length-prefixed JSON frames) and `rtt`
(the smoothed round-trip estimate). Nothing here opens a socket.
"""
