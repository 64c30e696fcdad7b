"""Hostile tokens over HTTP and gRPC: every forgery is 401, a missing role 403, another company's scans 404/empty.

Also: no token and no image byte ever reaches the logs, whatever the outcome of the request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import COMPARE, SCANS, Harness, assert_grpc, assert_problem, grpc_error

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.auth import ALL_ROLES, ROLE_COMPARE, ROLE_DELETE, ROLE_READ, ROLE_UPDATE

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.served()]

OBAMA1, OBAMA2 = "obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def victim(env: Harness, faces_dir: Path) -> dict[str, Any]:
    """One scan of company "acme" that intruders try to reach."""
    return await env.stored_scan((faces_dir / OBAMA1).read_bytes(), (faces_dir / OBAMA2).read_bytes(),
                                 reference="victim-secret-ref")


# --------------------------------------------------------------------------- forged tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(signature)


def _hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def _es256_raw(env: Harness, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Signed by the local issuer's real key, with a header PyJWT itself would refuse to write."""
    assert env.runtime.local_issuer is not None
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    signer = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256)
    return head + "." + _b64(signer.sign(head.encode(), env.runtime.local_issuer.private_key))


def _local_kid(env: Harness) -> str:
    assert env.runtime.local_issuer is not None
    return env.runtime.local_issuer.kid


ATTACKER_EC = ec.generate_private_key(ec.SECP256R1())
ATTACKER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(env: Harness) -> bytes:
    assert env.runtime.local_issuer is not None
    return env.runtime.local_issuer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _tampered(env: Harness) -> str:
    head, _, sig = env.signed().split(".")
    return f"{head}.{_b64(json.dumps(env.claims(company_id='globex')).encode())}.{sig}"


def _embedded_jwk(env: Harness) -> str:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ATTACKER_EC.public_key()))
    return jwt.encode(env.claims(), ATTACKER_EC, algorithm="ES256", headers={"kid": "attacker", "jwk": jwk})


Forge = Callable[[Harness], str]
FORGERIES: list[tuple[str, Forge]] = [
    ("alg-none", lambda e: _unsigned({"alg": "none", "typ": "JWT"}, e.claims())),
    ("alg-none-with-signature", lambda e: _unsigned({"alg": "none"}, e.claims(), b"sig")),
    ("alg-None-with-kid", lambda e: _unsigned({"alg": "None", "kid": _local_kid(e)}, e.claims(), b"x")),
    ("hs256-signed-with-public-pem", lambda e: _hs256(_public_pem(e), {"alg": "HS256", "kid": _local_kid(e)},
                                                      e.claims())),
    ("hs256-signed-with-public-jwk", lambda e: _hs256(
        json.dumps(e.runtime.local_issuer.public_jwk()).encode() if e.runtime.local_issuer else b"",
        {"alg": "HS256", "kid": _local_kid(e)}, e.claims())),
    ("wrong-key-same-kid", lambda e: jwt.encode(e.claims(), ATTACKER_EC, algorithm="ES256",
                                                headers={"kid": _local_kid(e)})),
    ("wrong-key-no-kid", lambda e: jwt.encode(e.claims(), ATTACKER_EC, algorithm="ES256")),
    ("unknown-kid", lambda e: jwt.encode(e.claims(), ATTACKER_EC, algorithm="ES256", headers={"kid": "attacker"})),
    ("embedded-jwk", _embedded_jwk),
    ("jku-header", lambda e: jwt.encode(e.claims(), ATTACKER_EC, algorithm="ES256",
                                        headers={"kid": "attacker", "jku": "http://127.0.0.1:9/jwks.json"})),
    ("rs256-under-ec-kid", lambda e: jwt.encode(e.claims(), ATTACKER_RSA, algorithm="RS256",
                                                headers={"kid": _local_kid(e)})),
    ("tampered-payload", _tampered),
    ("wrong-iss", lambda e: e.signed(iss="https://evil.example")),
    ("no-iss", lambda e: e.signed(iss=None)),
    ("wrong-aud", lambda e: e.signed(aud="another-api")),
    ("aud-list-without-ours", lambda e: e.signed(aud=["a", "b"])),
    ("expired", lambda e: e.signed(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200,
                                           nbf=int(time.time()) - 7200)),
    ("no-exp", lambda e: e.signed(exp=None)),
    ("not-yet-valid", lambda e: e.signed(nbf=int(time.time()) + 3600)),
    ("missing-company", lambda e: e.signed(company_id=None)),
    ("empty-company", lambda e: e.signed(company_id="  ")),
    ("company-not-a-string", lambda e: e.signed(company_id=["acme", "globex"])),
    ("missing-sub", lambda e: e.signed(sub=None)),
    ("roles-not-a-list", lambda e: e.signed(roles=7)),
    ("crit-header", lambda e: e.signed(headers={"crit": ["exp"]})),
    ("kid-not-a-string", lambda e: _es256_raw(e, {"alg": "ES256", "kid": 5}, e.claims())),
    ("kid-null", lambda e: _es256_raw(e, {"alg": "ES256", "kid": None, "typ": "JWT"}, e.claims())),
    ("oversized", lambda e: e.signed(padding="x" * 12_500)),  # just over the 16 KiB token limit
]


@pytest.mark.parametrize("forge", [f[1] for f in FORGERIES], ids=[f[0] for f in FORGERIES])
async def test_forged_token_is_401_http(env: Harness, victim: dict[str, Any], forge: Forge) -> None:
    token = forge(env)
    headers = {"Authorization": f"Bearer {token}"}
    for resp in (await env.http.get(SCANS, headers=headers),
                 await env.http.get(f"{SCANS}/{victim['id']}", headers=headers),
                 await env.http.delete(f"{SCANS}/{victim['id']}", headers=headers)):
        body = assert_problem(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert token not in resp.text and "victim-secret-ref" not in resp.text
        assert body["detail"] and len(body["detail"]) < 100


@pytest.mark.parametrize("forge", [f[1] for f in FORGERIES], ids=[f[0] for f in FORGERIES])
async def test_forged_token_is_unauthenticated_grpc(env: Harness, victim: dict[str, Any], forge: Forge) -> None:
    token = forge(env)
    metadata = (("authorization", f"Bearer {token}"),)
    for call in (env.stub.ListScans(pb.ListScansRequest(), metadata=metadata),
                 env.stub.GetScan(pb.GetScanRequest(id=victim["id"]), metadata=metadata),
                 env.stub.DeleteScan(pb.DeleteScanRequest(id=victim["id"]), metadata=metadata)):
        err = await grpc_error(call)
        if len(token) > 16_000 and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # grpc's own 16 KiB metadata limit refuses it before any of our code runs: refused all the same.
            assert "metadata" in (err.details() or "")
            continue
        assert_grpc(err, 401, "unauthorized")


MALFORMED: list[str] = [
    "", "Bearer", "Bearer ", "Basic YWxpY2U6c2VjcmV0", "Token abc.def.ghi", "Bearer abc.def",
    "Bearer a.b.c.d", "Bearer abc.def.ghi", "Bearer ====.====.====", "Bearer a.b.c extra", "bearer",
    "Bearer eyJhbGciOiJFUzI1NiJ9.e30.", "Bearer e30.e30.e30",
]


@pytest.mark.parametrize("value", MALFORMED)
async def test_malformed_authorization_header(env: Harness, value: str) -> None:
    resp = await env.http.get(SCANS, headers={"Authorization": value})
    assert_problem(resp, 401, "unauthorized")
    err = await grpc_error(env.stub.ListScans(pb.ListScansRequest(), metadata=(("authorization", value),)))
    assert_grpc(err, 401, "unauthorized")


async def test_missing_or_doubled_credentials(env: Harness) -> None:
    assert_problem(await env.http.get(SCANS), 401, "unauthorized")
    resp = await env.http.get(SCANS, headers={"Authorization": "Bearer \u00e9\u00e9.\u00e9.\u00e9".encode()})
    assert_problem(resp, 401, "unauthorized")
    assert_grpc(await grpc_error(env.stub.ListScans(pb.ListScansRequest())), 401, "unauthorized")
    doubled = (*env.metadata(), *env.metadata(company="globex"))
    assert_grpc(await grpc_error(env.stub.ListScans(pb.ListScansRequest(), metadata=doubled)), 401, "unauthorized")
    # An unauthenticated upload is refused before its body is read.
    huge = b"\0" * 100
    resp = await env.http.post(COMPARE, files={"file1": ("a", huge), "file2": ("b", huge)},
                               data={"channel": "WEB", "reference": "r"})
    assert_problem(resp, 401, "unauthorized")


# --------------------------------------------------------------------------- roles


def _without(role: str) -> list[str]:
    return [r for r in ALL_ROLES if r != role]


async def test_missing_role_is_403_http(env: Harness, victim: dict[str, Any], faces_dir: Path) -> None:
    photo = (faces_dir / OBAMA1).read_bytes()
    url = f"{SCANS}/{victim['id']}"
    cases: list[tuple[str, Any]] = [
        (ROLE_COMPARE, lambda h: env.http_compare(photo, photo, headers=h)),
        (ROLE_READ, lambda h: env.http.get(url, headers=h)),
        (ROLE_READ, lambda h: env.http.get(SCANS, headers=h)),
        (ROLE_UPDATE, lambda h: env.http.put(url, headers=h, json={"reference": "changed"})),
        (ROLE_DELETE, lambda h: env.http.delete(url, headers=h)),
    ]
    for role, call in cases:
        resp = await call(env.headers(roles=_without(role)))
        body = assert_problem(resp, 403, "forbidden")
        assert role in body["detail"] and "victim-secret-ref" not in resp.text
        assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]
        assert_problem(await call(env.headers(roles=[])), 403, "forbidden")
    assert (await env.http.get(url, headers=env.headers())).json()["reference"] == "victim-secret-ref"


async def test_missing_role_is_permission_denied_grpc(env: Harness, victim: dict[str, Any], faces_dir: Path) -> None:
    photo = (faces_dir / OBAMA1).read_bytes()
    sid = victim["id"]
    cases: list[tuple[str, Any]] = [
        (ROLE_COMPARE, lambda m: env.grpc_compare(photo, b"", metadata=m)),
        (ROLE_READ, lambda m: env.stub.GetScan(pb.GetScanRequest(id=sid), metadata=m)),
        (ROLE_READ, lambda m: env.stub.ListScans(pb.ListScansRequest(), metadata=m)),
        (ROLE_UPDATE, lambda m: env.stub.UpdateScan(pb.UpdateScanRequest(id=sid, reference="x"), metadata=m)),
        (ROLE_DELETE, lambda m: env.stub.DeleteScan(pb.DeleteScanRequest(id=sid), metadata=m)),
    ]
    for role, call in cases:
        assert_grpc(await grpc_error(call(env.metadata(roles=_without(role)))), 403, "forbidden")
    scan = await env.stub.GetScan(pb.GetScanRequest(id=sid), metadata=env.metadata())
    assert scan.reference == "victim-secret-ref"


# --------------------------------------------------------------------------- tenancy

INTRUDERS = ["globex", "ACME", "acme ", "acme%", "*", "' OR '1'='1"]


@pytest.mark.parametrize("company", INTRUDERS)
async def test_other_company_never_sees_data_http(env: Harness, victim: dict[str, Any], company: str) -> None:
    headers = env.headers(company=company, user="mallory")
    url = f"{SCANS}/{victim['id']}"
    for resp in (await env.http.get(url, headers=headers),
                 await env.http.put(url, headers=headers, json={"reference": "pwned", "companyId": company}),
                 await env.http.delete(url, headers=headers)):
        assert_problem(resp, 404, "not_found")
        assert "victim-secret-ref" not in resp.text
    for params in ({}, {"reference": "victim-secret-ref"}, {"size": 200, "sort": "reference,desc"}):
        page = await env.http.get(SCANS, headers=headers, params=params)
        assert page.status_code == 200, page.text
        assert page.json()["content"] == [] and page.json()["totalElements"] == 0
    # Unknown ids answer exactly the same as another company's id.
    unknown = await env.http.get(f"{SCANS}/{uuid.uuid4()}", headers=headers)
    assert unknown.json()["detail"] == (await env.http.get(url, headers=headers)).json()["detail"]
    still = await env.http.get(url, headers=env.headers())
    assert still.status_code == 200 and still.json()["reference"] == "victim-secret-ref"
    assert still.json()["updatedById"] is None


@pytest.mark.parametrize("company", INTRUDERS)
async def test_other_company_never_sees_data_grpc(env: Harness, victim: dict[str, Any], company: str) -> None:
    meta = env.metadata(company=company, user="mallory")
    sid = victim["id"]
    for call in (env.stub.GetScan(pb.GetScanRequest(id=sid), metadata=meta),
                 env.stub.UpdateScan(pb.UpdateScanRequest(id=sid, reference="pwned"), metadata=meta),
                 env.stub.DeleteScan(pb.DeleteScanRequest(id=sid), metadata=meta)):
        err = await grpc_error(call)
        assert_grpc(err, 404, "not_found")
        assert "victim-secret-ref" not in (err.details() or "")
    for request in (pb.ListScansRequest(), pb.ListScansRequest(reference="victim-secret-ref", size=200)):
        page = await env.stub.ListScans(request, metadata=meta)
        assert list(page.content) == [] and page.total_elements == 0
    scan = await env.stub.GetScan(pb.GetScanRequest(id=sid), metadata=env.metadata())
    assert scan.reference == "victim-secret-ref" and not scan.HasField("updated_by_id")


# --------------------------------------------------------------------------- nothing secret in the logs


def _log_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter()
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.__dict__))
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        if record.stack_info:
            parts.append(record.stack_info)
    return "\n".join(parts)


def _markers(data: bytes) -> list[str]:
    """Ways a slice of ``data`` could show up in a log line: repr, hex, base64 (3-byte aligned), latin-1."""
    chunk = data[len(data) // 2 // 3 * 3:][:48]
    return [repr(chunk)[2:-1], chunk.hex(), base64.b64encode(chunk).decode(), _b64(chunk),
            chunk.decode("latin-1")]


async def test_tokens_and_images_never_logged(env: Harness, faces_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    photo1, photo2 = (faces_dir / OBAMA1).read_bytes(), (faces_dir / OBAMA2).read_bytes()
    no_face = (faces_dir / "no_face_rocket.jpg").read_bytes()
    good = env.token()
    forged = [forge(env) for _, forge in FORGERIES]
    caplog.set_level(logging.DEBUG)
    with caplog.at_level(logging.DEBUG, logger=""):
        ok = await env.http_compare(photo1, photo2, headers={"Authorization": f"Bearer {good}"})
        assert ok.status_code == 200
        sid = ok.json()["id"]
        assert (await env.grpc_compare(photo1, photo2, metadata=(("authorization", f"Bearer {good}"),))).id
        bad = await env.http_compare(photo1, no_face, headers={"Authorization": f"Bearer {good}"})
        assert bad.status_code == 422
        broken = await env.http_compare(photo1[:5000], photo2, headers={"Authorization": f"Bearer {good}"})
        assert broken.status_code == 415
        await grpc_error(env.grpc_compare(photo1, no_face, metadata=(("authorization", f"Bearer {good}"),)))
        for token in forged:
            await env.http_compare(photo1, photo2, headers={"Authorization": f"Bearer {token}"})
            await grpc_error(env.stub.GetScan(pb.GetScanRequest(id=sid),
                                              metadata=(("authorization", f"Bearer {token}"),)))
        assert (await env.http.delete(f"{SCANS}/{sid}", headers={"Authorization": f"Bearer {good}"})).status_code \
            == 204
    text = _log_text(caplog.records) + caplog.text
    assert caplog.records, "expected at least the deletion audit record"
    for token in [good, *forged]:
        assert token not in text
        assert token.split(".")[2] not in text or len(token.split(".")[2]) < 8  # not even the signature
    for data in (photo1, photo2, no_face):
        for marker in _markers(data):
            assert marker not in text


async def test_unknown_company_claim_path_is_refused(env: Harness) -> None:
    # A company claim given by dotted path that does not exist in the token is a missing company (401).
    token = env.signed(company_id=None, org={"id": "acme"})
    assert_problem(await env.http.get(SCANS, headers={"Authorization": f"Bearer {token}"}), 401, "unauthorized")
