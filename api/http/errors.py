"""The HTTP service's errors, and the one place that maps every error to a status and a JSON body.

Every error answer has one shape, ``{"error": {"code", "message", "request_id"}}``: clients
branch on ``code`` (stable), people read ``message``. Errors below ``api/`` (retrieval's tree)
are translated here, so no route decides a status code on its own.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from llms import errors as llm_errors
from rag import errors as rag_errors
from retrieval.errors import (
    CatalogueError,
    EncoderError,
    EncoderMismatchError,
    ImageError,
    ImageTooLargeError,
    IndexNotFoundError,
    InvalidQueryError,
    RetrievalError,
    StoreError,
    UnsupportedImageError,
)

__all__ = [
    "ApiError",
    "BackendUnavailableError",
    "BadRequestError",
    "DeadlineExceededError",
    "ImageNotFoundError",
    "ImageTooLargeApiError",
    "ImageUnavailableError",
    "InternalError",
    "InvalidImageError",
    "LlmUnavailableError",
    "LlmUpstreamError",
    "MalformedToolCallApiError",
    "ModelNotFoundApiError",
    "NotReadyError",
    "OverloadedError",
    "PathNotAllowedError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "SessionNotFoundApiError",
    "SessionsUnavailableError",
    "StorageError",
    "StorageTimeoutError",
    "StorageUnavailableError",
    "UnauthorizedError",
    "UnsupportedMediaError",
    "UrlNotAllowedError",
    "ValidationFailedError",
    "error_body",
    "to_api_error",
]


class ApiError(Exception):
    """An error with an HTTP status, a stable code and a message safe to show a caller."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    @property
    def is_client_error(self) -> bool:
        return self.status < 500


class BadRequestError(ApiError):
    status, code = 400, "bad_request"


class InvalidImageError(BadRequestError):
    code = "invalid_image"


class ImageUnavailableError(BadRequestError):
    """The image source answered, but not with the image (4xx at the origin, too many redirects, bad host)."""

    code = "image_unavailable"


class ImageNotFoundError(ImageUnavailableError):
    code = "image_not_found"


class UrlNotAllowedError(BadRequestError):
    code = "url_not_allowed"


class PathNotAllowedError(BadRequestError):
    code = "path_not_allowed"


class SessionNotFoundApiError(ApiError):
    status, code = 404, "session_not_found"


class UnauthorizedError(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "ApiKey"})


class ModelNotFoundApiError(ApiError):
    status, code = 404, "model_not_found"


class PayloadTooLargeError(ApiError):
    status, code = 413, "payload_too_large"


class ImageTooLargeApiError(PayloadTooLargeError):
    code = "image_too_large"


class UnsupportedMediaError(ApiError):
    status, code = 415, "unsupported_image"


class ValidationFailedError(ApiError):
    status, code = 422, "invalid_request"


class OverloadedError(ApiError):
    status, code = 429, "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RateLimitedError(ApiError):
    """The caller's key is over its rate limit (``TANDEM_API__RATE_PER_S``, ``TANDEM_API__BURST``)."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        # Retry-After is whole seconds: rounded up, so a client that waits that long finds a token.
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class InternalError(ApiError):
    status, code = 500, "internal_error"


class StorageError(ApiError):
    """The image storage failed (connection refused, 5xx): not the caller's fault."""

    status, code = 502, "storage_error"


class NotReadyError(ApiError):
    status, code = 503, "not_ready"


class StorageUnavailableError(ApiError):
    """A circuit breaker is open: the storage failed repeatedly and is not tried for a while."""

    status, code = 503, "storage_unavailable"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class BackendUnavailableError(ApiError):
    status, code = 503, "backend_unavailable"


class SessionsUnavailableError(ApiError):
    """The shared session store (Redis) did not answer: a chat turn can neither load nor save its session."""

    status, code = 503, "sessions_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class LlmUpstreamError(ApiError):
    """An LLM worker failed (every attempt), broke a stream, or emitted malformed tool calls."""

    status, code = 502, "llm_error"


class MalformedToolCallApiError(LlmUpstreamError):
    code = "malformed_tool_call"


class LlmUnavailableError(ApiError):
    """No healthy LLM worker serves the model right now."""

    status, code = 503, "llm_unavailable"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class DeadlineExceededError(ApiError):
    status, code = 504, "deadline_exceeded"


class StorageTimeoutError(ApiError):
    status, code = 504, "storage_timeout"


def to_api_error(exc: BaseException) -> ApiError:
    """Translate any exception into an :class:`ApiError`; unknown ones become a message-free 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RetrievalError):
        message = str(exc)
        if isinstance(exc, ImageTooLargeError):
            return ImageTooLargeApiError(message)
        if isinstance(exc, UnsupportedImageError):
            return UnsupportedMediaError(message)
        if isinstance(exc, ImageError):
            return InvalidImageError(message)
        if isinstance(exc, InvalidQueryError):
            return ValidationFailedError(message)
        if isinstance(exc, IndexNotFoundError | EncoderMismatchError):
            return NotReadyError(message)
        if isinstance(exc, EncoderError | StoreError | CatalogueError):
            return BackendUnavailableError(message)
    if isinstance(exc, llm_errors.LLMError):
        return _llm_error(exc)
    if isinstance(exc, rag_errors.RagError):
        return _rag_error(exc)
    if isinstance(exc, TimeoutError):
        return DeadlineExceededError("the request did not finish within its deadline")
    # Never echo an unexpected exception's text: it can hold paths, hosts or secrets.
    return InternalError("internal error; the request id identifies it in the service's logs")


def _llm_error(exc: llm_errors.LLMError) -> ApiError:
    message = str(exc)
    if isinstance(exc, llm_errors.OverloadedError):
        return OverloadedError(message, retry_after_s=max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, llm_errors.NoWorkerError):
        return LlmUnavailableError(message, retry_after_s=math.ceil(exc.retry_after_s))
    if isinstance(exc, llm_errors.ModelNotFoundError):
        return ModelNotFoundApiError(message)
    if isinstance(exc, llm_errors.InvalidChatRequestError):
        return ValidationFailedError(message)
    if isinstance(exc, llm_errors.DeadlineExceededError):
        return DeadlineExceededError(message)
    if isinstance(exc, llm_errors.MalformedToolCallError):
        return MalformedToolCallApiError(message)
    if isinstance(exc, llm_errors.EngineError):
        return BackendUnavailableError(message)
    return LlmUpstreamError(message)


def _rag_error(exc: rag_errors.RagError) -> ApiError:
    message = str(exc)
    if isinstance(exc, rag_errors.SessionNotFoundError):
        return SessionNotFoundApiError(message)
    if isinstance(exc, rag_errors.InvalidTurnError):
        return ValidationFailedError(message)
    if isinstance(exc, rag_errors.RetrievalUnavailableError):
        return BackendUnavailableError(message)
    if isinstance(exc, rag_errors.SessionStoreUnavailableError):
        return SessionsUnavailableError(message)
    return InternalError("internal error; the request id identifies it in the service's logs")


def error_body(error: ApiError, request_id: str | None) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
