"""Typed dependencies: routes receive the lifespan's resources and the caller's key check through these.

Example:
    >>> @router.post("/x")  # doctest: +SKIP
    ... async def x(service: ServiceDep) -> ...: ...
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from api.http.errors import NotReadyError, UnauthorizedError
from api.http.recommender import RecommendationService
from api.http.resources import Resources
from llms.dispatcher import Dispatcher

__all__ = ["ApiKeyDep", "DispatcherDep", "RequestIdDep", "ResourcesDep", "ServiceDep", "require_api_key"]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="One of TANDEM_API__KEYS.")


async def get_resources(request: Request) -> Resources:
    resources: Resources | None = getattr(request.app.state, "resources", None)
    if resources is None:
        raise NotReadyError("the service is starting")
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_service(resources: ResourcesDep) -> RecommendationService:
    if resources.service is None:
        raise NotReadyError(f"the service cannot recommend yet: {resources.not_ready}")
    return resources.service


ServiceDep = Annotated[RecommendationService, Depends(get_service)]


async def get_dispatcher(resources: ResourcesDep) -> Dispatcher:
    return resources.dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


async def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    keys = request.app.state.api_keys
    if not keys:
        return  # no keys: the middleware only lets loopback clients in
    if key is None:
        raise UnauthorizedError("missing X-API-Key header")
    # Compare against every key in constant time, so timing does not reveal a near match.
    matched = False
    for candidate in keys:
        matched |= secrets.compare_digest(key.encode(), candidate)
    if not matched:
        raise UnauthorizedError("invalid API key")


ApiKeyDep = Depends(require_api_key)


async def get_request_id(request: Request) -> str:
    return str(request.state.request_id)


RequestIdDep = Annotated[str, Depends(get_request_id)]
