"""Bearer tokens: each names one tenant, and every request is scoped to its tenant."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from fastapi import HTTPException, Request
from pydantic import SecretStr

__all__ = ["BAD_REQUEST", "TenantTokens"]

#: The responses every authenticated route documents: a bad parameter (the body names it:
#: ``{"detail": {"field", "reason", ...}}``) and a missing or unknown token.
BAD_REQUEST: dict[int | str, dict[str, str]] = {
    400: {"description": "A parameter is not valid; the body names it and what is allowed"},
    401: {"description": "Missing or invalid bearer token"},
}


class TenantTokens:
    """The tenants' tokens (``collector.tokens``: tenant -> token)."""

    def __init__(self, tokens: Mapping[str, SecretStr]) -> None:
        self._tokens = [(t.get_secret_value().encode(), tenant) for tenant, t in tokens.items()]

    def tenant_of(self, authorization: str | None) -> str | None:
        """The tenant of an ``Authorization: Bearer <token>`` header, if the token is known."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        given = token.encode()
        found = None
        for known, tenant in self._tokens:  # every token compared: no timing hint
            if secrets.compare_digest(known, given):
                found = tenant
        return found

    def __call__(self, request: Request) -> str:
        """A FastAPI dependency: the caller's tenant, or a 401."""
        tenant = self.tenant_of(request.headers.get("authorization"))
        if tenant is None:
            raise HTTPException(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        return tenant
