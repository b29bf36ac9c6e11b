"""Typed dependencies: routes receive the lifespan's resources and the caller's key check through these.

Example:
    >>> @router.post("/x")  # doctest: +SKIP
    ... async def x(service: ServiceDep, caller: CallerDep) -> ...: ...
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from api.http.errors import NotReadyError, UnauthorizedError
from api.http.keys import KeyRing
from api.http.recommender import RecommendationService
from api.http.resources import Resources
from llms.dispatcher import Dispatcher

__all__ = [
    "ApiKeyDep",
    "CallerDep",
    "DispatcherDep",
    "RequestIdDep",
    "ResourcesDep",
    "ServiceDep",
    "require_api_key",
]

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="One of TANDEM_API__KEYS or of the TANDEM_API__KEYS_FILE."
)
_UNSEEN = object()


async def get_resources(request: Request) -> Resources:
    resources: Resources | None = getattr(request.app.state, "resources", None)
    if resources is None:
        raise NotReadyError("the service is starting")
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_service(resources: ResourcesDep) -> RecommendationService:
    if resources.service is None or resources.not_ready is not None:
        raise NotReadyError(f"the service cannot recommend: {resources.not_ready or 'starting'}")
    return resources.service


ServiceDep = Annotated[RecommendationService, Depends(get_service)]


async def get_dispatcher(resources: ResourcesDep) -> Dispatcher:
    return resources.dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


async def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> str | None:
    """The caller's id (never the key itself), or ``None`` when the service has no keys (loopback only)."""
    keys: KeyRing = request.app.state.keys
    if not keys.configured:
        return None  # no keys: the middleware only lets loopback clients in
    if not key:
        raise UnauthorizedError("missing X-API-Key header")
    # The middleware has already identified the caller of a /v1/ request (and counted it against its rate).
    caller = getattr(request.state, "caller", _UNSEEN)
    if caller is _UNSEEN:
        caller = keys.identify(key)
    if caller is None:
        raise UnauthorizedError("invalid API key")
    return str(caller)


ApiKeyDep = Depends(require_api_key)
# The same dependency as ApiKeyDep (FastAPI runs it once per request), for routes that need to know who calls.
CallerDep = Annotated[str | None, Depends(require_api_key)]


async def get_request_id(request: Request) -> str:
    return str(request.state.request_id)


RequestIdDep = Annotated[str, Depends(get_request_id)]
