"""The one check of an `Authorization: Bearer KEY` header against the node's API key."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str, api_key: str) -> bool:
    """True when the header carries exactly `api_key` as a bearer token (constant-time compare)."""
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
