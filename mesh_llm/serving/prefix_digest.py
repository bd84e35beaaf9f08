"""Compact names for the prompt prefixes a model server holds KV for (pure).

A host lists `prefix_digest(tokens, n)` of what its slots and its prefix cache hold, for each
``n`` of `DIGEST_LENGTHS` the held tokens reach, in `/mesh/slots` as ``prefix_digests``. Anyone
holding the same model's tokens of a prompt computes the same digests and can tell whether a
host is likely to hold the prompt's first ``n`` tokens.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

DIGEST_LENGTHS = (256, 1024, 4096)  # prefix lengths in tokens a host advertises digests of
MAX_DIGESTS = 64  # most digests one host lists


def prefix_digest(tokens: Sequence[int], n: int) -> str:
    """32 hex digits: the first 16 bytes of the SHA-256 of the first ``n`` token ids, each as a
    4-byte little-endian signed integer. ``tokens`` must hold at least ``n`` tokens."""
    if len(tokens) < n:
        raise ValueError(f"a digest of {n} tokens needs {n} tokens, not {len(tokens)}")
    raw = struct.pack(f"<{n}i", *tokens[:n])
    return hashlib.sha256(raw).digest()[:16].hex()
