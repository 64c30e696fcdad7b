"""OpenAPI documentation of the HTTP routes: examples, the bodies read by hand (multipart compare form, JSON
update) and the problem responses."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Example,
    Link,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.types import Method
from litestar.types.internal_types import PathParameterDefinition

from server.api.http.bodies import JSON_MEDIA_TYPE
from server.api.http.problems import PROBLEM_MEDIA_TYPE
from server.api.schemas import CompareResponse, Problem, ScanEntity, ScanUpdateIn
from server.domain import MAX_REFERENCE, Channel, CompareResult, QualityFilter
from server.errors import (
    FaceNotComparable,
    FacerecError,
    Forbidden,
    InvalidField,
    LowQuality,
    NoFace,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedImage,
    UnsupportedMediaType,
)

# Stable operation ids (generated clients name their methods after them); the compare response links to the
# scan operations (OpenAPI links: clients and fuzzers can follow create -> read).
COMPARE_FACES, LIST_SCANS = "compareFaces", "listScans"
GET_SCAN, UPDATE_SCAN, DELETE_SCAN = "getScan", "updateScan", "deleteScan"

# A real response (the first two shared Obama photos through the shipped pipeline; values rounded), so every
# example is complete and valid: 68 landmark points, plausible attributes.
COMPARE_EXAMPLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "examples" / "compare_response.json").read_text())
_FACE: dict[str, Any] = COMPARE_EXAMPLE["face1"]
ENTITY_EXAMPLE: dict[str, Any] = {
    "id": COMPARE_EXAMPLE["id"], "companyId": "ACME", "createdDate": COMPARE_EXAMPLE["created"],
    "updatedDate": "2024-05-02T08:30:00.000000", "createdById": "alice", "updatedById": "bob",
    "elapsedTime": 0.112, "compareResult": COMPARE_EXAMPLE["compare_result"],
    "compareSimilarity": COMPARE_EXAMPLE["compare_similarity"], "salesChannel": COMPARE_EXAMPLE["channel"],
    "reference": COMPARE_EXAMPLE["reference"], "face1": COMPARE_EXAMPLE["face1"], "face2": COMPARE_EXAMPLE["face2"],
    "threshold": COMPARE_EXAMPLE["threshold"], "qualityFilter": COMPARE_EXAMPLE["quality_filter"],
}
_EXAMPLE_REQUEST_ID = "5f0c8e1d2b7a4c3e9f1a2b3c4d5e6f70"

# One example per status, made from the error taxonomy itself (so codes and titles cannot drift): what a client
# really receives, instead of one 422 example under every status.
_STATUS_EXAMPLES: dict[int, tuple[FacerecError, str]] = {
    400: (InvalidField(f"reference must be 1-{MAX_REFERENCE} characters", field="reference"),
          "/v1/compare_face"),
    401: (Unauthorized("token expired"), "/v1/face-recognition"),
    403: (Forbidden("missing role face:compare"), "/v1/compare_face"),
    404: (NotFound("scan not found"), "/v1/face-recognition/8c5b2a52-4a51-4f7e-9d7c-6d1f3d1f0b3e"),
    413: (PayloadTooLarge("file1 is over the 10485760 byte limit", field="file1"), "/v1/compare_face"),
    415: (UnsupportedImage("file2 is not a supported image (JPEG, PNG, WebP, BMP)", field="file2"),
          "/v1/compare_face"),
    422: (NoFace("no face found in file2", field="file2"), "/v1/compare_face"),
    429: (Overloaded("the server is at capacity", retry_after_ms=250), "/v1/compare_face"),
    503: (Unavailable("database unreachable", retry_after_ms=1000), "/v1/face-recognition"),
}


# PUT's 415 is about the body's media type, not an image.
_MEDIA_TYPE_EXAMPLE = (UnsupportedMediaType("the body must be application/json"),
                       "/v1/face-recognition/8c5b2a52-4a51-4f7e-9d7c-6d1f3d1f0b3e")
# Other problems a status also stands for, shown beside its main example where ``problem(..., more=True)``.
_MORE_EXAMPLES: dict[int, list[tuple[FacerecError, str]]] = {
    422: [(FaceNotComparable("a face was found in file2 but cannot be compared reliably: the head is turned 62 "
                             "degrees (yaw); faces are compared up to 50 degrees", field="file2"), "/v1/compare_face"),
          (LowQuality("face quality below the MEDIUM filter in file1 (size 0.12 < 0.20: face too small (move "
                      "closer or use a larger image))", field="file1", quality_filter="MEDIUM",
                      failing={"file1": ["size"]}), "/v1/compare_face")],
}


def problem_example(status: int, example: tuple[FacerecError, str] | None = None, which: int = 0) -> dict[str, Any]:
    """The documented problem body of ``status`` (as ``problems.problem_response`` writes it): that status's usual
    error, ``example`` (error, request path) where an operation answers the status with another code, or with
    ``which`` > 0 one of the status's other problems."""
    if example is not None:
        err, instance = example
    else:
        err, instance = _STATUS_EXAMPLES[status] if which == 0 else _MORE_EXAMPLES[status][which - 1]
    body: dict[str, Any] = {"type": f"https://facerec.dev/problems/{err.code}", "title": err.title,
                            "status": err.status, "code": err.code, "detail": err.detail}
    if err.field:
        body["field"] = err.field
    body.update(instance=instance, request_id=_EXAMPLE_REQUEST_ID)
    retry_after_ms = getattr(err, "retry_after_ms", None)
    if retry_after_ms is not None:
        body["retry_after_ms"] = retry_after_ms
    if isinstance(err, LowQuality):
        body.update(quality_filter=err.quality_filter, failing_components=err.failing)
    return body


def problem(description: str, status: int, example: tuple[FacerecError, str] | None = None, *,
            more: bool = False) -> ResponseSpec:
    """An error response documented as problem+json, with that status's own example (or ``example``), and with
    ``more`` the examples of the other problems answered with the same status."""
    if example is not None:
        examples = [problem_example(status, example)]
    else:
        extra = len(_MORE_EXAMPLES.get(status, [])) if more else 0
        examples = [problem_example(status, which=which) for which in range(extra + 1)]
    return ResponseSpec(data_container=Problem, description=description, media_type=PROBLEM_MEDIA_TYPE,
                        generate_examples=False, examples=[Example(summary=e["code"], value=e) for e in examples])


COMMON_ERRORS: dict[int, ResponseSpec] = {
    400: problem("Malformed request or field (`invalid_field`, `invalid_id`, `missing_field`, ...)", 400),
    401: problem("Missing or invalid bearer token", 401),
    403: problem("The token lacks the required role", 403),
}
COMPARE_RESPONSES: dict[int, ResponseSpec] = {
    200: ResponseSpec(data_container=CompareResponse, description="The stored scan (snake_case)",
                      generate_examples=False,
                      examples=[Example(summary="same person", value=COMPARE_EXAMPLE)]),
    **COMMON_ERRORS,
    413: problem("A file or the whole request is over its size limit", 413),
    415: problem("A file is not a supported image (JPEG, PNG, WebP, BMP)", 415),
    422: problem("No face found (`no_face`); a face that cannot be compared reliably (`face_not_comparable`: "
                 "turned too far, too small, eyes not visible), whatever the quality filter; or a face below the "
                 "request's quality filter (`low_quality`, with `quality_filter` and `failing_components`). "
                 "Checked in that order; `field` names file1 or file2", 422, more=True),
    429: problem("Overloaded; retry after `Retry-After` seconds", 429),
    503: problem("Temporarily unavailable; retry after `Retry-After` seconds", 503),
}
ENTITY_RESPONSES: dict[int, ResponseSpec] = {
    200: ResponseSpec(data_container=ScanEntity, description="The scan (camelCase)", generate_examples=False,
                      examples=[Example(summary="scan", value=ENTITY_EXAMPLE)]),
    **COMMON_ERRORS,
    404: problem("Unknown id, or another company's scan", 404),
}
# Reads and writes of the store answer 503 while the database is unreachable.
_STORE_UNAVAILABLE = problem("Temporarily unavailable (e.g. the database); retry after `Retry-After` seconds", 503)
ENTITY_RESPONSES[503] = _STORE_UNAVAILABLE
UPDATE_RESPONSES: dict[int, ResponseSpec] = {
    **ENTITY_RESPONSES,
    413: problem("The request body is over the limit", 413),
    415: problem("The body is not `application/json`", 415, _MEDIA_TYPE_EXAMPLE),
}
LIST_RESPONSES: dict[int, ResponseSpec] = {**COMMON_ERRORS, 503: _STORE_UNAVAILABLE}
DELETE_RESPONSES: dict[int, ResponseSpec] = {**COMMON_ERRORS, 404: ENTITY_RESPONSES[404], 503: _STORE_UNAVAILABLE}
READY_RESPONSES: dict[int, ResponseSpec] = {
    503: ResponseSpec(data_container=dict[str, Any], description="Not ready: which components fail, and why",
                      generate_examples=False),
}


CHANNELS = [c.value for c in Channel]
RESULTS = [r.value for r in CompareResult]
_IMAGE = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY,
                description="image file (JPEG, PNG, WebP or BMP; the content type sent is not trusted)")
QUALITY_LEVELS = [q.value for q in QualityFilter]
# The compare form, one line per field: (name, schema, required). Optional fields (e.g. tuning parameters) are
# added here with required=False. Any other field is refused with 400 `invalid_field` naming it.
COMPARE_FORM_FIELDS: list[tuple[str, Schema, bool]] = [
    ("channel", Schema(type=OpenAPIType.STRING, enum=CHANNELS, description="sales channel (case-insensitive)"),
     True),
    ("file1", _IMAGE, True),
    ("file2", _IMAGE, True),
    ("reference", Schema(type=OpenAPIType.STRING, min_length=1, max_length=MAX_REFERENCE,
                         description="caller's own key to find the scan later (contract number, ...), "
                         f"1-{MAX_REFERENCE} characters after trimming, at least one of them visible; no control, "
                         "format (bidi, zero-width) or line-separator characters"), True),
    ("threshold", Schema(type=OpenAPIType.NUMBER, minimum=0, maximum=1,
                         description="decision threshold on the `compare_similarity` scale: `Same person` when the "
                         "similarity reaches it; default the server's FACEREC_THRESHOLD (0.5 unless configured). "
                         "README \"Score and threshold\" maps thresholds to false-accept rates"), False),
    ("quality_filter", Schema(type=OpenAPIType.STRING, enum=QUALITY_LEVELS,
                              description="refuse faces below this quality level (422 `low_quality` naming the "
                              "file and the failing components); AUTO or absent = the server's "
                              "FACEREC_QUALITY_FILTER. Case-insensitive. README \"Quality filter\" has what each "
                              "level refuses"), False),
]


@dataclass
class CompareFormOperation(Operation):
    """The compare form is parsed by hand (limits apply while streaming), so its body is described here."""

    def __post_init__(self) -> None:
        schema = Schema(
            type=OpenAPIType.OBJECT, required=[name for name, _, required in COMPARE_FORM_FIELDS if required],
            properties={name: field for name, field, _ in COMPARE_FORM_FIELDS}, additional_properties=False,
        )
        self.request_body = RequestBody(required=True,
                                        content={"multipart/form-data": OpenAPIMediaType(schema)})
        created = (self.responses or {}).get("200")
        if isinstance(created, OpenAPIResponse):
            by_id = {"scan_id": "$response.body#/id"}
            created.links = {
                "GetScan": Link(operation_id=GET_SCAN, parameters=by_id, description="Read the stored scan"),
                "UpdateScan": Link(operation_id=UPDATE_SCAN, parameters=by_id, description="Update it"),
                "DeleteScan": Link(operation_id=DELETE_SCAN, parameters=by_id, description="Delete it"),
            }


UPDATE_BODY_SCHEMA = "ScanUpdateIn"


@dataclass
class UpdateBodyOperation(Operation):
    """The update body is read by hand (after the caller is authorised, within size and depth limits), so Litestar
    does not see its type: the body refers to the :class:`~server.api.schemas.ScanUpdateIn` component, which
    :func:`body_components` generates from that struct and :func:`refine_openapi` adds to the document (Litestar
    replaces the configured component schemas with the ones it generates) and documents like any other."""

    def __post_init__(self) -> None:
        ref = Reference(ref=f"#/components/schemas/{UPDATE_BODY_SCHEMA}")
        self.request_body = RequestBody(required=True, content={JSON_MEDIA_TYPE: OpenAPIMediaType(ref)})


def struct_schema(struct: type[msgspec.Struct]) -> Schema:
    """The OpenAPI schema of a msgspec struct that a handler decodes by hand (so Litestar never sees its type):
    camelCase names, optional fields, ``null`` branches, string lengths and number ranges, taken from the struct
    itself, so the document cannot drift from what the server accepts."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return Schema(
        type=OpenAPIType.OBJECT, title=struct.__name__,
        properties={f.encode_name: _type_schema(f.type) for f in info.fields},
        required=[f.encode_name for f in info.fields if f.required],
        additional_properties=False if info.forbid_unknown_fields else None,
    )


def _type_schema(t: msgspec.inspect.Type) -> Schema:
    if isinstance(t, msgspec.inspect.UnionType):
        branches = [_type_schema(b) for b in t.types]
        # What annotates a branch (a description, an enum listing null) belongs to the property as a whole.
        outer: dict[str, Any] = {}
        for b in t.types:
            if isinstance(b, msgspec.inspect.Metadata) and b.extra_json_schema:
                outer.update({k: v for k, v in b.extra_json_schema.items() if k != "extra"})
                outer.update(b.extra_json_schema.get("extra", {}))
        return Schema(one_of=branches, **outer)
    if isinstance(t, msgspec.inspect.Metadata):
        return _type_schema(t.type)
    if isinstance(t, msgspec.inspect.NoneType):
        return Schema(type=OpenAPIType.NULL)
    if isinstance(t, msgspec.inspect.StrType):
        return Schema(type=OpenAPIType.STRING, min_length=t.min_length, max_length=t.max_length, pattern=t.pattern)
    if isinstance(t, msgspec.inspect.FloatType | msgspec.inspect.IntType):
        kind = OpenAPIType.NUMBER if isinstance(t, msgspec.inspect.FloatType) else OpenAPIType.INTEGER
        return Schema(type=kind, minimum=t.ge, maximum=t.le, exclusive_minimum=t.gt, exclusive_maximum=t.lt)
    if isinstance(t, msgspec.inspect.BoolType):
        return Schema(type=OpenAPIType.BOOLEAN)
    raise TypeError(f"no OpenAPI mapping for {t!r}: extend _type_schema")


def body_components() -> dict[str, dict[str, Any]]:
    """Component schemas of the bodies read by hand (added to the document by :func:`refine_openapi`)."""
    return {UPDATE_BODY_SCHEMA: struct_schema(ScanUpdateIn).to_schema()}


def compare_operation_id(handler: HTTPRouteHandler, method: Method,
                         path: list[str | PathParameterDefinition]) -> str:
    """``compareFaces`` at ``/v1/compare_face``; ``compareFacesSdk`` at the original service's SDK path.

    operationIds must be unique, and one handler serves both paths.
    """
    return "compareFacesSdk" if "face-recognition-sdk" in path else COMPARE_FACES


# --------------------------------------------------------------------------- the document, refined


@dataclass(frozen=True, slots=True)
class FieldDoc:
    """What the generated schema of one wire field lacks: a description, a format, a range, an enum."""

    description: str
    format: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    enum: tuple[str, ...] | tuple[int, ...] | None = None
    items: int | None = None  # exact length of an array
    pattern: str | None = None


_PIXELS = "pixels of the original image after EXIF orientation (x to the right, y down)"
_UTC = "UTC, ISO 8601 without offset, microseconds always present (the original service's format)"
# The contract's timestamps have no offset, so they are not RFC 3339 `date-time` values (validators reject them):
# they are documented by this pattern instead, and read as UTC.
_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$"
# Every property of the wire schemas, by snake_case name (camelCase names map to the same entry). Wording from
# the README's field table; tests/unit/api/test_openapi.py fails when a new wire field has no line here.
FIELD_DOCS: dict[str, FieldDoc] = {
    # compare response and scan entity
    "id": FieldDoc("scan id", format="uuid"),
    "reference": FieldDoc("caller's own key to find the scan later (contract number, ...), "
                          f"1-{MAX_REFERENCE} characters"),
    "channel": FieldDoc("sales channel", enum=tuple(CHANNELS)),
    "sales_channel": FieldDoc("sales channel", enum=tuple(CHANNELS)),
    "compare_result": FieldDoc("`Same person` when `compare_similarity` reaches the server's threshold "
                               "(FACEREC_THRESHOLD, default 0.5)", enum=tuple(RESULTS)),
    "compare_similarity": FieldDoc("calibrated similarity of the two faces, higher = more alike; 0.5 is the "
                                   "calibrated decision point", minimum=0, maximum=1),
    "created": FieldDoc(f"when the scan was made: {_UTC}", pattern=_TIMESTAMP),
    "created_date": FieldDoc(f"when the scan was made: {_UTC}", pattern=_TIMESTAMP),
    "updated_date": FieldDoc(f"last update, null until the scan is first updated: {_UTC}", pattern=_TIMESTAMP),
    "company_id": FieldDoc("company (tenant) of the scan, from the token's company claim"),
    "created_by_id": FieldDoc("user (token `sub`) who made the scan"),
    "updated_by_id": FieldDoc("user (token `sub`) who last updated the scan, null until then"),
    "elapsed_time": FieldDoc("seconds spent extracting both faces", minimum=0),
    "face1": FieldDoc("analysis of the most prominent face of file1"),
    "face2": FieldDoc("analysis of the most prominent face of file2"),
    # <Face>
    "x1": FieldDoc(f"left of the detector box of the compared face, clipped to the image; {_PIXELS}", minimum=0),
    "y1": FieldDoc(f"top of the detector box; {_PIXELS}", minimum=0),
    "x2": FieldDoc(f"right of the detector box; {_PIXELS}", minimum=0),
    "y2": FieldDoc(f"bottom of the detector box; {_PIXELS}", minimum=0),
    "landmark_68": FieldDoc("68 points in iBUG-300W order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth "
                            "48-67); point 0 is on the subject's right (image left for a frontal face)", items=68),
    "x": FieldDoc(f"x in {_PIXELS}"),
    "y": FieldDoc(f"y in {_PIXELS}"),
    "eye_dist": FieldDoc("distance between the two eye centres (means of points 36-41 and 42-47), pixels",
                         exclusive_minimum=0),
    "face_luminance": FieldDoc("mean BT.601 luma over the face region (not the whole image)", minimum=0,
                               maximum=255),
    "face_occlusion": FieldDoc("estimated occluded fraction of the face (outside the image, or covered)",
                               minimum=0, maximum=1),
    "face_quality": FieldDoc("fitness for recognition after OFIQ / ISO/IEC 29794-5 components (size, sharpness, "
                             "pose, illumination, occlusion, open eyes); 1 = ideal", minimum=0, maximum=1),
    "left_eye_closed": FieldDoc("the subject's left eye (image right in an unmirrored photo): 1 = closed",
                                minimum=0, maximum=1),
    "right_eye_closed": FieldDoc("the subject's right eye (image left in an unmirrored photo): 1 = closed",
                                 minimum=0, maximum=1),
    "mouth_opened": FieldDoc("inner-lip gap over the inter-eye distance, 0 at <= 0.03, 1 at >= 0.5", minimum=0,
                             maximum=1),
    "pitch": FieldDoc("head pitch in degrees; positive = looking up", minimum=-180, maximum=180),
    "yaw": FieldDoc("head yaw in degrees; positive = face turned towards the image's right (the subject's left)",
                    minimum=-180, maximum=180),
    "roll": FieldDoc("in-plane tilt in degrees; positive = clockwise as displayed", minimum=-180, maximum=180),
    "faces_found": FieldDoc("(addition) how many faces the detector found in this image", minimum=1),
    "detection_score": FieldDoc("(addition) detector confidence of this face", minimum=0, maximum=1),
    "orientation_correction": FieldDoc("(addition) clockwise quarter turn (0, 90, 180 or 270 degrees) that was applied "
                                       "to the photo to find this face; coordinates stay in the photo as sent",
                                       enum=(0, 90, 180, 270)),
    "quality_components": FieldDoc("(addition) the components of `face_quality`, each 0..1 with 1 = ideal: what "
                                   "`quality_filter` levels check; null for scans stored before they were kept"),
    # the components (schema-qualified: `size` alone is the page size)
    "QualityComponentsOut.size": FieldDoc("face size: inter-eye distance, 0 at <= 15 px, 1 at >= 60 px",
                                          minimum=0, maximum=1),
    "sharpness": FieldDoc("sharpness: Laplacian variance of the aligned face, 0 = heavily blurred", minimum=0,
                          maximum=1),
    "pose": FieldDoc("pose: 1 = frontal, falling with yaw and pitch", minimum=0, maximum=1),
    "illumination": FieldDoc("illumination: 1 = face luma mid-grey, 0 = black or white", minimum=0, maximum=1),
    "occlusion": FieldDoc("1 - `face_occlusion`: 1 = nothing covered or cut off", minimum=0, maximum=1),
    "eyes": FieldDoc("open eyes: 1 - 0.8 x the more closed eye", minimum=0, maximum=1),
    "presence": FieldDoc("the landmarker's confidence that the crop holds a face (shown, not gated)", minimum=0,
                         maximum=1),
    # decision settings (compare response, scan entity)
    "threshold": FieldDoc("the decision threshold the verdict was made with (the request's, else the server's "
                          "FACEREC_THRESHOLD); null on the entity for scans stored before it was recorded",
                          minimum=0, maximum=1),
    "quality_filter": FieldDoc("the quality filter level applied (AUTO resolved to the server's default level); "
                               "null on the entity for scans stored before it was recorded",
                               enum=tuple(q.value for q in QualityFilter if q is not QualityFilter.AUTO)),
    # Spring Data page
    "content": FieldDoc("the scans of this page"),
    "total_elements": FieldDoc("scans matching the filters, all pages", minimum=0),
    "total_pages": FieldDoc("pages of `size` scans", minimum=0),
    "number": FieldDoc("this page's number, 0-based", minimum=0),
    "size": FieldDoc("requested page size", minimum=1, maximum=200),
    "number_of_elements": FieldDoc("scans on this page", minimum=0),
    "first": FieldDoc("whether this is the first page"),
    "last": FieldDoc("whether this is the last page"),
    "empty": FieldDoc("whether this page holds no scan"),
    "sort": FieldDoc("sort description (Spring Data shape)"),
    "sorted": FieldDoc("whether the page is sorted"),
    "unsorted": FieldDoc("whether the page is unsorted"),
    # problem+json (RFC 9457)
    "type": FieldDoc("URI naming the problem type; ends with `code`"),
    "title": FieldDoc("short summary of the problem type"),
    "status": FieldDoc("HTTP status code", minimum=400, maximum=599),
    "code": FieldDoc("stable machine-readable error code (e.g. `invalid_field`, `unauthorized`, `no_face`, "
                     "`overloaded`); the same code is sent over gRPC as `facerec-error-code`"),
    "detail": FieldDoc("explanation for this occurrence, safe to show (never internals)"),
    "field": FieldDoc("the request field at fault, when there is one (e.g. `file2`)"),
    "instance": FieldDoc("the request path"),
    "request_id": FieldDoc("the request's id (also the X-Request-ID header): quote it when reporting a problem"),
    "retry_after_ms": FieldDoc("429/503 only: milliseconds to wait before retrying (Retry-After rounds up to "
                               "seconds)", minimum=0),
    "failing_components": FieldDoc("422 `low_quality` only: for each refused file (`file1`, `file2`), the "
                                   "components below the level's minimums"),
}
# Extension members the generated Problem schema does not know (problems.py merges them into the top level).
_PROBLEM_EXTENSIONS: dict[str, dict[str, Any]] = {
    "retry_after_ms": {"type": "integer"},
    "quality_filter": {"type": "string"},
    "failing_components": {"type": "object", "additionalProperties": {"type": "array", "items": {
        "type": "string", "enum": ["size", "sharpness", "pose", "illumination", "occlusion", "eyes"]}}},
}

_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"description": "the request's id: the caller's own when it matches [A-Za-z0-9._-]{1,128}, "
                     "else a fresh one; also in problem bodies and every log record", "required": True,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}},
    "traceparent": {"description": "W3C trace context naming this server's span of the request's trace (the "
                    "caller's trace id when it sent a valid `traceparent`)",
                    "schema": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"}},
    "Retry-After": {"description": "seconds to wait before retrying, rounded up (the problem's `retry_after_ms` "
                    "has milliseconds)", "required": True, "schema": {"type": "integer", "minimum": 1}},
    "WWW-Authenticate": {"description": "Bearer challenge (RFC 6750)", "required": True,
                         "schema": {"type": "string"}},
}
_STATUS_HEADERS: dict[str, tuple[str, ...]] = {"401": ("WWW-Authenticate",), "403": ("WWW-Authenticate",),
                                               "429": ("Retry-After",), "503": ("Retry-After",)}
_PARAMETER_DOCS: dict[str, dict[str, Any]] = {
    "scan_id": {"description": "scan id (a UUID; anything else is 400 `invalid_id`)", "format": "uuid"},
    "page": {"minimum": 0},
    "size": {"minimum": 1, "maximum": 200},
    "salesChannel": {"enum": CHANNELS, "description": "only scans of this sales channel"},
    "compareResult": {"enum": RESULTS, "description": "only scans with this result"},
    "reference": {"description": "only scans with exactly this reference"},
}
BEARER_SCHEME = "bearerAuth"
OIDC_SCHEME = "oidc"


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _apply(prop: dict[str, Any], doc: FieldDoc) -> None:
    prop["description"] = doc.description
    branches = [b for b in prop.get("oneOf", [prop]) if b.get("type") != "null"]
    for branch in branches:
        if "$ref" in branch:
            continue
        for key, value in (("format", doc.format), ("minimum", doc.minimum), ("maximum", doc.maximum),
                           ("exclusiveMinimum", doc.exclusive_minimum), ("pattern", doc.pattern)):
            if value is not None:
                branch[key] = value
        if doc.enum is not None:
            branch["enum"] = list(doc.enum)
        if doc.items is not None:
            branch["minItems"] = branch["maxItems"] = doc.items


def field_doc(schema_name: str, prop: str) -> FieldDoc | None:
    """The doc line of ``schema_name.prop``: a schema-qualified line first (for names that mean different things
    in different schemas, like ``size``), else the line of the property's snake_case name."""
    return FIELD_DOCS.get(f"{schema_name}.{prop}") or FIELD_DOCS.get(_snake(prop))


def undocumented_properties(doc: dict[str, Any]) -> list[str]:
    """``Schema.property`` of every wire field without a :data:`FIELD_DOCS` line (enum schemas aside)."""
    missing = []
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        for prop in schema.get("properties", {}):
            if field_doc(name, prop) is None:
                missing.append(f"{name}.{prop}")
    return missing


def refine_openapi(doc: dict[str, Any], *, auth_issuer: str | None) -> None:
    """Add what Litestar cannot infer to the generated document, in place.

    The schemas of the bodies read by hand (:func:`body_components`); bearer security (plus OpenID Connect
    discovery when an issuer is configured) on every operation that can answer 401; field descriptions, formats,
    ranges and enums from :data:`FIELD_DOCS`; the ``X-Request-ID``, ``traceparent``, ``Retry-After`` and
    ``WWW-Authenticate`` response headers; parameter ranges and enums.
    """
    components = doc.setdefault("components", {})
    schemes: dict[str, Any] = {BEARER_SCHEME: {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "OIDC access token (JWT) from the configured issuer, or from `facerec token` when the "
                       "server runs its local issuer. Roles: face:compare, face:read, face:update, face:delete.",
    }}
    if auth_issuer:
        schemes[OIDC_SCHEME] = {"type": "openIdConnect", "description": "the configured OIDC issuer",
                                "openIdConnectUrl": auth_issuer.rstrip("/") + "/.well-known/openid-configuration"}
    components["securitySchemes"] = schemes
    components["headers"] = _HEADERS
    components.setdefault("schemas", {}).update(body_components())
    for schema_name, schema in components.get("schemas", {}).items():
        props = schema.get("properties", {})
        if schema.get("title") == "Problem":
            props.pop("extra", None)
            props.update({k: dict(v) for k, v in _PROBLEM_EXTENSIONS.items()})
        for prop_name, prop in props.items():
            line = field_doc(schema_name, prop_name)
            if line is not None:
                _apply(prop, line)
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for param in operation.get("parameters", []):
                extra = _PARAMETER_DOCS.get(param.get("name", ""))
                if extra:
                    target = param["schema"]
                    branches = [b for b in target.get("oneOf", [target]) if b.get("type") != "null"]
                    for branch in branches:
                        branch.update({k: v for k, v in extra.items() if k != "description"})
                    if "description" in extra:
                        param["description"] = extra["description"]
            if "401" in operation["responses"]:
                operation["security"] = [{BEARER_SCHEME: []}] + ([{OIDC_SCHEME: []}] if auth_issuer else [])
            for status, response in operation["responses"].items():
                names = ("X-Request-ID", "traceparent", *_STATUS_HEADERS.get(status, ()))
                response["headers"] = {n: {"$ref": f"#/components/headers/{n}"} for n in names}
