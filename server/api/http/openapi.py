"""OpenAPI documentation of the HTTP routes: examples, the multipart body and the problem responses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Example,
    Link,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)

from server.api.http.problems import PROBLEM_MEDIA_TYPE
from server.api.schemas import CompareResponse, Problem, ScanEntity

# Operation ids the compare response links to (OpenAPI links: clients and fuzzers can follow create -> read).
GET_SCAN, UPDATE_SCAN, DELETE_SCAN = "getScan", "updateScan", "deleteScan"

_FACE: dict[str, Any] = {
    "x1": 212, "y1": 148, "x2": 398, "y2": 372,
    "landmark_68": [{"x": 220.4, "y": 231.9}, "... 68 points in iBUG-68 order ..."],
    "eye_dist": 78.3, "face_luminance": 131.2, "face_occlusion": 0.04, "face_quality": 0.91,
    "left_eye_closed": 0.05, "right_eye_closed": 0.06, "mouth_opened": 0.02,
    "pitch": -3.1, "yaw": 4.7, "roll": 1.2, "faces_found": 1, "detection_score": 0.93,
}
COMPARE_EXAMPLE: dict[str, Any] = {
    "id": "8c5b2a52-4a51-4f7e-9d7c-6d1f3d1f0b3e", "reference": "0002", "channel": "WEB",
    "compare_result": "Same person", "compare_similarity": 0.838, "created": "2024-05-01T12:12:06.090098",
    "face1": _FACE, "face2": _FACE,
}
ENTITY_EXAMPLE: dict[str, Any] = {
    "id": COMPARE_EXAMPLE["id"], "companyId": "ACME", "createdDate": "2024-05-01T12:12:06.090098",
    "updatedDate": None, "createdById": "alice", "updatedById": None, "elapsedTime": 0.112,
    "compareResult": "Same person", "compareSimilarity": 0.838, "salesChannel": "WEB", "reference": "0002",
    "face1": _FACE, "face2": _FACE,
}
_PROBLEM_EXAMPLE: dict[str, Any] = {
    "type": "https://facerec.dev/problems/no_face", "title": "No face found", "status": 422,
    "code": "no_face",
    "detail": "no face found in file2", "field": "file2", "instance": "/v1/compare_face",
    "request_id": "5f0c8e1d2b7a4c3e9f1a2b3c4d5e6f70",
}


def problem(description: str) -> ResponseSpec:
    """An error response documented as problem+json."""
    return ResponseSpec(data_container=Problem, description=description, media_type=PROBLEM_MEDIA_TYPE,
                        generate_examples=False,
                        examples=[Example(summary="problem", value=_PROBLEM_EXAMPLE)])


COMMON_ERRORS: dict[int, ResponseSpec] = {
    400: problem("Malformed request or field (`invalid_field`, `invalid_id`, `missing_field`, ...)"),
    401: problem("Missing or invalid bearer token"),
    403: problem("The token lacks the required role"),
}
COMPARE_RESPONSES: dict[int, ResponseSpec] = {
    200: ResponseSpec(data_container=CompareResponse, description="The stored scan (snake_case)",
                      generate_examples=False,
                      examples=[Example(summary="same person", value=COMPARE_EXAMPLE)]),
    **COMMON_ERRORS,
    413: problem("A file or the whole request is over its size limit"),
    415: problem("A file is not a supported image (JPEG, PNG, WebP, BMP)"),
    422: problem("No face found; `field` names file1 or file2"),
    429: problem("Overloaded; retry after `Retry-After` seconds"),
    503: problem("Temporarily unavailable; retry after `Retry-After` seconds"),
}
ENTITY_RESPONSES: dict[int, ResponseSpec] = {
    200: ResponseSpec(data_container=ScanEntity, description="The scan (camelCase)", generate_examples=False,
                      examples=[Example(summary="scan", value=ENTITY_EXAMPLE)]),
    **COMMON_ERRORS,
    404: problem("Unknown id, or another company's scan"),
}
# Reads and writes of the store answer 503 while the database is unreachable.
_STORE_UNAVAILABLE = problem("Temporarily unavailable (e.g. the database); retry after `Retry-After` seconds")
ENTITY_RESPONSES[503] = _STORE_UNAVAILABLE
UPDATE_RESPONSES: dict[int, ResponseSpec] = {**ENTITY_RESPONSES, 413: problem("The request body is over the limit"),
                                             415: problem("The body is not `application/json`")}
LIST_RESPONSES: dict[int, ResponseSpec] = {**COMMON_ERRORS, 503: _STORE_UNAVAILABLE}
DELETE_RESPONSES: dict[int, ResponseSpec] = {**COMMON_ERRORS, 404: ENTITY_RESPONSES[404], 503: _STORE_UNAVAILABLE}
READY_RESPONSES: dict[int, ResponseSpec] = {
    503: ResponseSpec(data_container=dict[str, Any], description="Not ready: which components fail, and why",
                      generate_examples=False),
}


@dataclass
class CompareFormOperation(Operation):
    """The compare form is parsed by hand (limits apply while streaming), so its body is described here."""

    def __post_init__(self) -> None:
        image = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        schema = Schema(
            type=OpenAPIType.OBJECT, required=["channel", "file1", "file2", "reference"],
            properties={
                "channel": Schema(type=OpenAPIType.STRING, enum=["WEB", "MOBILE", "OTHER"]),
                "file1": image, "file2": image,
                "reference": Schema(type=OpenAPIType.STRING, min_length=1, max_length=255,
                                    description="caller's own key for the scan"),
            },
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


@dataclass
class UpdateBodyOperation(Operation):
    """The update body is read by hand (after the caller is authorised, within a size limit): described here."""

    def __post_init__(self) -> None:
        schema = Schema(
            type=OpenAPIType.OBJECT, additional_properties=False,
            properties={
                "compareResult": Schema(type=OpenAPIType.STRING, enum=["Same person", "Different person"]),
                "compareSimilarity": Schema(type=OpenAPIType.NUMBER, minimum=0.0, maximum=1.0),
                "salesChannel": Schema(type=OpenAPIType.STRING, enum=["WEB", "MOBILE", "OTHER"]),
                "reference": Schema(type=OpenAPIType.STRING, min_length=1, max_length=255),
            },
        )
        self.request_body = RequestBody(required=True, content={"application/json": OpenAPIMediaType(schema)})
