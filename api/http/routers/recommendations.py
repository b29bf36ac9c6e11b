"""``/v1/recommendations``: top-K products for a photo (URL, shared-storage path, bytes, upload), words, or both."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request

from api.http.deps import ApiKeyDep, RequestIdDep, ServiceDep
from api.http.errors import DeadlineExceededError, ImageTooLargeApiError
from api.http.recommender import RecommendationService
from api.http.schemas import ErrorResponse, RecommendRequest, RecommendResponse, RecommendUploadForm

__all__ = ["router"]

router = APIRouter(prefix="/v1/recommendations", tags=["recommendations"], dependencies=[ApiKeyDep])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad input: invalid image, refused URL or path, image not found"},
    401: {"model": ErrorResponse, "description": "Missing or invalid X-API-Key"},
    413: {"model": ErrorResponse, "description": "Image or body over the byte or pixel limit"},
    415: {"model": ErrorResponse, "description": "Not an image"},
    422: {"model": ErrorResponse, "description": "Request does not match the schema"},
    429: {"model": ErrorResponse, "description": "Overloaded; retry after Retry-After seconds"},
    502: {"model": ErrorResponse, "description": "The image storage failed"},
    503: {"model": ErrorResponse, "description": "Not ready, or the image storage's breaker is open"},
    504: {"model": ErrorResponse, "description": "Deadline exceeded (image storage too slow)"},
}


async def _within_deadline(
    service: RecommendationService,
    body: RecommendRequest,
    request: Request,
    request_id: str,
    upload: bytes | None = None,
) -> RecommendResponse:
    deadline = request.app.state.settings.api.deadline_s
    try:
        async with asyncio.timeout(deadline):
            return await service.recommend(body, request_id=request_id, base_url=str(request.base_url), upload=upload)
    except TimeoutError as exc:
        raise DeadlineExceededError(f"the request did not finish within its deadline of {deadline:g} s") from exc


@router.post("", response_model=RecommendResponse, responses=_ERRORS, summary="Recommend products (JSON)")
async def recommend(
    body: RecommendRequest, request: Request, service: ServiceDep, request_id: RequestIdDep
) -> RecommendResponse:
    """Top-K catalogue products for a buyer's photo and/or words.

    The photo comes from exactly one of ``image_url`` (http/https; private addresses refused),
    ``image_path`` (``s3://bucket/key`` or a key under the storage root) or ``image_base64``.
    """
    return await _within_deadline(service, body, request, request_id)


# filters is a JSON part; the photo any image type (OpenAPI's multipart encoding, which generated clients follow).
_UPLOAD_ENCODING = {"filters": {"contentType": "application/json"}, "file": {"contentType": "image/*"}}


@router.post(
    "/upload",
    response_model=RecommendResponse,
    responses=_ERRORS,
    summary="Recommend products (multipart upload)",
    openapi_extra={"requestBody": {"content": {"multipart/form-data": {"encoding": _UPLOAD_ENCODING}}}},
)
async def recommend_upload(
    form: Annotated[RecommendUploadForm, Form(media_type="multipart/form-data")],
    request: Request,
    service: ServiceDep,
    request_id: RequestIdDep,
) -> RecommendResponse:
    """The same as ``POST /v1/recommendations``, with the photo uploaded as the ``file`` part."""
    limit = service.limits.max_bytes
    data = await form.file.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLargeApiError(f"the uploaded file is over the limit of {limit} bytes")
    # The photo is the upload, so the JSON body's "image or text" rule does not apply: no re-validation.
    fields = form.model_dump(include={"text", "top_k", "mode", "pool", "mmr_lambda", "diversity"})
    body = RecommendRequest.model_construct(filters=form.filters, **fields)
    return await _within_deadline(service, body, request, request_id, upload=data)
