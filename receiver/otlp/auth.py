"""Bearer-token check shared by both transports (`authorization: Bearer <token>`)."""

from __future__ import annotations

import hmac


class BearerAuth:
    def __init__(self, tokens: list[str]) -> None:
        if not tokens:
            raise ValueError("BearerAuth needs at least one token")
        self._tokens = [t.encode() for t in tokens]

    def check(self, header: str | None) -> str | None:
        """None when the header carries a known token, else the reason (English) to send back."""
        if not header:
            return "missing authorization header (expected 'Bearer <token>')"
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "authorization header must use the Bearer scheme"
        given = token.strip().encode()
        ok = False
        for t in self._tokens:  # no early exit: constant time over the token list
            ok |= hmac.compare_digest(given, t)
        return None if ok else "invalid bearer token"
