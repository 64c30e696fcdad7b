"""The OpenAPI document: valid, precise (security, operation ids, formats, ranges, enums, descriptions, headers,
per-status examples), and good enough for a generated client that type-checks."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from server.api.http.openapi import FIELD_DOCS, undocumented_properties
from server.app import create_app
from server.settings import Settings

OPERATION_IDS = {
    ("post", "/v1/compare_face"): "compareFaces",
    ("post", "/face-recognition-sdk/v1/compare_face"): "compareFacesSdk",
    ("get", "/v1/face-recognition/{scan_id}"): "getScan",
    ("put", "/v1/face-recognition/{scan_id}"): "updateScan",
    ("delete", "/v1/face-recognition/{scan_id}"): "deleteScan",
    ("get", "/v1/face-recognition"): "listScans",
}
ISSUER = "https://login.example.com/realms/acme"


def fetch_document(tmp: Path, **changes: Any) -> dict[str, Any]:
    app = create_app(Settings(data_dir=tmp / "data", **changes))  # no lifespan: the document needs no runtime

    async def get() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            r = await client.get("/schema/openapi.json")
            assert r.status_code == 200
            return dict(r.json())

    return asyncio.run(get())


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fetch_document(tmp_path_factory.mktemp("openapi"))


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items() if isinstance(op, dict)]


def validator(doc: dict[str, Any], ref: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**ref, "components": doc["components"]})


def test_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    validate(doc)


def test_operation_ids_are_stable_and_unique(doc: dict[str, Any]) -> None:
    ids = {(m, p): op["operationId"] for m, p, op in operations(doc)}
    for key, expected in OPERATION_IDS.items():
        assert ids[key] == expected
    assert len(set(ids.values())) == len(ids)


def test_bearer_security_on_every_protected_operation(doc: dict[str, Any]) -> None:
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for m, p, op in operations(doc):
        protected = "401" in op["responses"]
        assert (op.get("security") == [{"bearerAuth": []}]) is protected, (m, p)
    assert "oidc" not in doc["components"]["securitySchemes"]  # no issuer configured: local issuer


def test_oidc_discovery_when_an_issuer_is_configured(tmp_path: Path) -> None:
    doc = fetch_document(tmp_path, auth_issuer=ISSUER)
    validate(doc)
    oidc = doc["components"]["securitySchemes"]["oidc"]
    assert oidc == {"type": "openIdConnect", "description": "the configured OIDC issuer",
                    "openIdConnectUrl": f"{ISSUER}/.well-known/openid-configuration"}
    op = doc["paths"]["/v1/compare_face"]["post"]
    assert op["security"] == [{"bearerAuth": []}, {"oidc": []}]


def test_formats_enums_and_ranges(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    compare, face, entity = schemas["CompareResponse"]["properties"], schemas["FaceOut"]["properties"], \
        schemas["ScanEntity"]["properties"]
    assert compare["id"]["format"] == "uuid" and entity["id"]["format"] == "uuid"
    # Timestamps: the contract's format has no offset, so it is a documented pattern, not RFC 3339 `date-time`
    # (schemathesis, rightly, rejects "2024-05-01T12:12:06.090098" as a date-time).
    timestamp = validator(doc, compare["created"])
    timestamp.validate("2024-05-01T12:12:06.090098")
    assert not timestamp.is_valid("2024-05-01T12:12:06Z")
    assert entity["createdDate"]["pattern"] == compare["created"]["pattern"]
    assert "format" not in compare["created"] and "UTC" in compare["created"]["description"]
    assert [b["pattern"] for b in entity["updatedDate"]["oneOf"] if b["type"] != "null"] == [
        compare["created"]["pattern"]]
    assert compare["compare_result"]["enum"] == ["Same person", "Different person"]
    assert entity["compareResult"]["enum"] == ["Same person", "Different person"]
    assert compare["channel"]["enum"] == entity["salesChannel"]["enum"] == ["WEB", "MOBILE", "OTHER"]
    for prop in (compare["compare_similarity"], face["face_quality"], face["face_occlusion"],
                 face["left_eye_closed"], face["mouth_opened"], face["detection_score"]):
        assert (prop["minimum"], prop["maximum"]) == (0, 1)
    assert (face["face_luminance"]["minimum"], face["face_luminance"]["maximum"]) == (0, 255)
    assert face["landmark_68"]["minItems"] == face["landmark_68"]["maxItems"] == 68
    params = {p["name"]: p for p in doc["paths"]["/v1/face-recognition/{scan_id}"]["get"]["parameters"]}
    assert params["scan_id"]["schema"]["format"] == "uuid"


def test_every_wire_field_is_described(doc: dict[str, Any]) -> None:
    assert undocumented_properties(doc) == [], "add a FieldDoc line to server/api/http/openapi.py FIELD_DOCS"
    face = doc["components"]["schemas"]["FaceOut"]["properties"]
    assert "positive = looking up" in face["pitch"]["description"]
    assert "subject's left eye" in face["left_eye_closed"]["description"]
    assert set(FIELD_DOCS) >= {"x1", "landmark_68", "compare_similarity", "retry_after_ms"}


def test_the_update_body_read_by_hand_is_documented_from_its_struct(doc: dict[str, Any]) -> None:
    """PUT reads its body itself (after auth, within limits), so Litestar never sees its type: the document still
    describes it, generated from ``ScanUpdateIn`` (the struct that decodes it), and documents the 415."""
    put = doc["paths"]["/v1/face-recognition/{scan_id}"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ScanUpdateIn"}
    body = doc["components"]["schemas"]["ScanUpdateIn"]
    assert set(body["properties"]) == {"compareResult", "compareSimilarity", "salesChannel", "reference"}
    assert body["additionalProperties"] is False and not body["required"]
    check = validator(doc, {"$ref": "#/components/schemas/ScanUpdateIn"})
    check.validate({"compareResult": "Same person", "compareSimilarity": 0.25, "salesChannel": None})
    for bad in ({"compareSimilarity": 1.5}, {"reference": ""}, {"bogus": 1}, {"salesChannel": "FAX"}):
        assert not check.is_valid(bad), bad
    assert put["responses"]["415"]["content"]["application/problem+json"]["examples"]
    (example,) = put["responses"]["415"]["content"]["application/problem+json"]["examples"].values()
    assert example["value"]["code"] == "unsupported_media_type"


def test_problem_examples_match_their_status(doc: dict[str, Any]) -> None:
    problem = validator(doc, {"$ref": "#/components/schemas/Problem"})
    codes = set()
    for m, p, op in operations(doc):
        for status, response in op["responses"].items():
            content = response.get("content", {}).get("application/problem+json")
            if content is None:
                continue
            examples = [e["value"] for e in content["examples"].values()]
            assert examples and len({e["code"] for e in examples}) == len(examples), (m, p, status)
            for example in examples:
                assert example["status"] == int(status), (m, p, status)
                problem.validate(example)
                codes.add(example["code"])
                if status in ("429", "503"):
                    assert example["retry_after_ms"] > 0
                if example["code"] == "low_quality":
                    assert example["failing_components"] == {example["field"]: ["size"]}
    assert {"invalid_field", "unauthorized", "forbidden", "not_found", "payload_too_large", "unsupported_image",
            "unsupported_media_type", "no_face", "low_quality", "overloaded", "unavailable"} <= codes
    assert "extra" not in doc["components"]["schemas"]["Problem"]["properties"]


def test_headers_are_declared(doc: dict[str, Any]) -> None:
    headers = doc["components"]["headers"]
    assert {"X-Request-ID", "Retry-After", "traceparent", "WWW-Authenticate"} <= set(headers)
    for m, p, op in operations(doc):
        for status, response in op["responses"].items():
            declared = set(response["headers"])
            assert {"X-Request-ID", "traceparent"} <= declared, (m, p, status)
            if status in ("429", "503"):
                assert "Retry-After" in declared, (m, p, status)
            if status == "401":
                assert "WWW-Authenticate" in declared


def test_success_examples_are_complete_and_valid(doc: dict[str, Any]) -> None:
    for m, p, op in operations(doc):
        ok = op["responses"].get("200", {}).get("content", {}).get("application/json")
        if ok is None or "examples" not in ok:
            continue
        check = validator(doc, ok["schema"])
        for example in ok["examples"].values():
            check.validate(example["value"])
            for face in ("face1", "face2"):
                points = example["value"][face]["landmark_68"]
                assert len(points) == 68 and all(set(pt) == {"x", "y"} for pt in points), (m, p)


def test_a_generated_client_type_checks(doc: dict[str, Any], tmp_path: Path) -> None:
    generator = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    if generator is None:
        pytest.skip("openapi-python-client (a dev dependency) is not installed")
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(doc))
    # No post hooks: the generator's own ruff pass would make the check depend on the installed ruff's rules.
    config = tmp_path / "generator.json"
    config.write_text(json.dumps({"post_hooks": []}))
    out = tmp_path / "facerec_api_client"
    gen = subprocess.run([generator, "generate", "--path", str(spec), "--output-path", str(out), "--meta", "none",
                          "--config", str(config)], capture_output=True, text=True, timeout=300, check=False)
    assert gen.returncode == 0, gen.stdout + gen.stderr
    assert "Warning" not in gen.stdout + gen.stderr, gen.stdout + gen.stderr
    modules = {p.stem for p in (out / "api").rglob("*.py")}
    assert {"compare_faces", "get_scan", "update_scan", "list_scans", "delete_scan"} <= modules
    # Security reached the client: the compare call needs an AuthenticatedClient.
    assert "client: AuthenticatedClient" in (out / "api" / "compare" / "compare_faces.py").read_text()
    check = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", out.name],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_documented_form_is_the_parsed_form(doc: dict[str, Any]) -> None:
    # The multipart schema lists exactly the fields the form reader accepts (any other is refused with 400), and
    # says so with additionalProperties: false.
    from server.api.http.forms import KNOWN_FIELDS, REQUIRED_FIELDS

    schema = doc["paths"]["/v1/compare_face"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(schema["properties"]) == set(KNOWN_FIELDS)
    assert set(schema["required"]) == set(REQUIRED_FIELDS)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["threshold"] | {"description": ""} == {"type": "number", "minimum": 0, "maximum": 1,
                                                                       "description": ""}
    assert schema["properties"]["quality_filter"]["enum"] == ["NONE", "LOW", "MEDIUM", "HIGH", "AUTO"]
