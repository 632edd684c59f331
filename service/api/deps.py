"""Dependency injection: the engine and settings live on ``app.state``, set by the lifespan."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings
from service.engine import Engine
from service.metrics import ADMIN_AUTH_REFUSED

_bearer = HTTPBearer(auto_error=False)


def get_engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the model is still loading")
    return engine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def require_admin(
    request: Request,
    settings: Settings = Depends(get_settings),
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """Bearer token check with a constant-time compare; admin is off when no token is set.
    Wrong tokens are counted per client (service.api.auth_limit): past the limit, 429."""
    if settings.admin_token is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the admin API is disabled: set CSFT_ADMIN_TOKEN to enable it",
            headers={"Connection": "close"},
        )
    limiter = request.app.state.auth_limiter
    client = request.client.host if request.client else "unknown"
    wait_s = limiter.retry_after(client)
    if wait_s is not None:
        ADMIN_AUTH_REFUSED.labels("limited").inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed admin authentications from {client}; retry in {wait_s} s",
            headers={"Retry-After": str(wait_s), "Connection": "close"},
        )
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "admin routes need 'Authorization: Bearer <token>'",
            # Close: an unauthenticated upload's body is never read, so the connection ends here.
            headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
        )
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        limiter.failed(client)
        ADMIN_AUTH_REFUSED.labels("wrong_token").inc()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong admin token", headers={"Connection": "close"})
