"""The one check of a request's API key (`Authorization: Bearer KEY` or `x-api-key: KEY`)."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str, api_key: str) -> bool:
    """True when the header carries exactly `api_key` as a bearer token (constant-time compare)."""
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def request_key_matches(authorization: str, x_api_key: str | None, api_key: str) -> bool:
    """True when either header carries `api_key`: Anthropic's clients send `x-api-key`."""
    if x_api_key is not None and hmac.compare_digest(x_api_key.strip().encode(), api_key.encode()):
        return True
    return bearer_matches(authorization, api_key)
