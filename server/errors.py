"""The one error taxonomy of facerec; each error carries its HTTP status (the gRPC mapping is in api/grpc/)."""

from __future__ import annotations

from typing import ClassVar


class FacerecError(Exception):
    """Base of every error the service reports to a client.

    ``code`` is stable and machine-readable; ``detail`` is safe to show to the caller (never internals).
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str | None = None, *, field: str | None = None) -> None:
        self.detail = detail or self.title
        self.field = field
        super().__init__(self.detail)


class BadRequest(FacerecError):
    status, code, title = 400, "bad_request", "Malformed request"


class InvalidField(BadRequest):
    code, title = "invalid_field", "Invalid field"


class MissingField(BadRequest):
    code, title = "missing_field", "Missing field"


class InvalidId(BadRequest):
    code, title = "invalid_id", "Not a valid scan id"


class Unauthorized(FacerecError):
    status, code, title = 401, "unauthorized", "Missing or invalid bearer token"


class Forbidden(FacerecError):
    status, code, title = 403, "forbidden", "The token lacks the required role"


class NotFound(FacerecError):
    status, code, title = 404, "not_found", "Not found"


class PayloadTooLarge(FacerecError):
    status, code, title = 413, "payload_too_large", "File or request too large"


class UnsupportedMediaType(FacerecError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class UnsupportedImage(FacerecError):
    status, code, title = 415, "unsupported_image", "Not a supported image"


class ImageTooLarge(UnsupportedImage):
    """Header dimensions over the pixel limit: refused before decoding (decompression bombs)."""

    status, code, title = 413, "image_too_large", "Image dimensions over the limit"


class NoFace(FacerecError):
    status, code, title = 422, "no_face", "No face found"


class FaceNotComparable(FacerecError):
    """A face was found but cannot be compared reliably (turned too far, too small, eyes not visible).

    Kept apart from :class:`NoFace` so a client can tell "re-take the photo facing the camera" from "no face here".
    """

    status, code, title = 422, "face_not_comparable", "Face found but not comparable"


class LowQuality(FacerecError):
    """A face below the request's ``quality_filter``: names the file (``field``) and the failing components."""

    status, code, title = 422, "low_quality", "Face quality below the filter"

    def __init__(self, detail: str | None = None, *, field: str | None = None, quality_filter: str = "",
                 failing: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail, field=field)
        self.quality_filter = quality_filter
        self.failing = failing or {}


class Overloaded(FacerecError):
    status, code, title = 429, "overloaded", "Server overloaded, retry later"

    def __init__(self, detail: str | None = None, *, retry_after_ms: int = 1000) -> None:
        super().__init__(detail)
        self.retry_after_ms = retry_after_ms


class Unavailable(FacerecError):
    status, code, title = 503, "unavailable", "Service temporarily unavailable"

    def __init__(self, detail: str | None = None, *, retry_after_ms: int = 1000) -> None:
        super().__init__(detail)
        self.retry_after_ms = retry_after_ms


class DeadlineExceeded(Unavailable):
    code, title = "deadline_exceeded", "Request deadline exceeded"


class InferenceFailed(FacerecError):
    status, code, title = 500, "inference_failed", "Inference failed"


class ModelBuildError(FacerecError):
    """Raised by `facerec models` (a CLI error, never an API response)."""

    code, title = "model_build_failed", "Model repository build failed"
