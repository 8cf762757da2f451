"""Bearer API keys: constant-time comparison against every configured key."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="an API key from [serve] api_keys")


def key_matches(token: str, keys: Sequence[str]) -> bool:
    """True when `token` equals one of `keys`; every key is compared, in constant time."""
    given = token.encode("utf-8")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode("utf-8"))
    return found


def require_key(keys: Sequence[str]) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency: 401 unless the request carries `Authorization: Bearer KEY` with a configured key.
    With no key configured it lets everything through (the server then binds loopback only)."""

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if not keys:
            return
        if credentials is None or credentials.scheme.lower() != "bearer" or not key_matches(
                credentials.credentials, keys):
            raise HTTPException(401, "missing or invalid API key: send the header Authorization: Bearer KEY with a "
                                "key from [serve] api_keys", headers={"WWW-Authenticate": "Bearer"})

    return check
