from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.auth import (
    LocalIssuer,
    RemoteJwks,
    TokenVerifier,
    parse_authorization_header,
    parse_jwks,
)
from server.domain import Principal
from server.errors import Unauthorized, Unavailable
from server.settings import Settings

from .conftest import claims, raw_token, rsa_jwk, sign

IDP = "https://idp.example"


def assert_rejected(verifier: TokenVerifier, token: str, detail: str) -> None:
    with pytest.raises(Unauthorized) as exc:
        verifier.verify_with_keys(token, asyncio.run(verifier.source.keys()))
    assert exc.value.status == 401
    assert exc.value.detail == detail
    assert token not in str(exc.value)
    assert exc.value.__cause__ is None  # nothing from the parser leaks through the chain


async def rejected(verifier: TokenVerifier, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as exc:
        await verifier.verify(token)
    return exc.value


# --------------------------------------------------------------------------- happy path


async def test_minted_token_yields_principal(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint("acme", "alice", ["face:compare", "face:read"], 300, "facerec")
    principal = await verifier.verify(token)
    assert principal == Principal(
        company_id="acme", user_id="alice", roles=frozenset({"face:compare", "face:read"})
    )


def test_sync_path_matches(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint("acme", "alice", [], 300, "facerec")
    keys = asyncio.run(verifier.source.keys())
    assert verifier.verify_with_keys(token, keys).user_id == "alice"


# --------------------------------------------------------------------------- algorithm attacks


def test_alg_none_is_rejected(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    for header in ({"alg": "none"}, {"alg": "none", "kid": issuer.kid}, {"alg": "None", "typ": "JWT"}):
        assert_rejected(verifier, raw_token(header, claims()), "disallowed algorithm")
    # PyJWT's own encoding of an unsigned token.
    assert_rejected(verifier, jwt.encode(claims(), "", algorithm="none"), "disallowed algorithm")


def test_missing_alg_is_rejected(verifier: TokenVerifier) -> None:
    assert_rejected(verifier, raw_token({"typ": "JWT"}, claims(), b"x"), "disallowed algorithm")


def test_hs256_signed_with_the_public_key_is_rejected(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    public_pem = issuer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
    unsigned = raw_token(header, claims())[:-1]  # "<h>.<p>." -> sign "<h>.<p>"
    signing_input = unsigned.rstrip(".")
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = raw_token(header, claims(), mac)
    assert_rejected(verifier, token, "disallowed algorithm")
    # The JWK form of the key as a secret fares no better.
    jwk_secret = json.dumps(issuer.public_jwk()).encode()
    mac = hmac.new(jwk_secret, signing_input.encode(), hashlib.sha256).digest()
    assert_rejected(verifier, raw_token(header, claims(), mac), "disallowed algorithm")


def test_algorithm_not_pinned_is_rejected(
    tmp_path: Path, issuer: LocalIssuer, rsa_key: rsa.RSAPrivateKey
) -> None:
    only_rs = TokenVerifier.from_settings(Settings(data_dir=tmp_path, auth_algorithms=("RS256",)), issuer)
    token = issuer.mint("acme", "u", [], 60, "facerec")  # ES256
    assert_rejected(only_rs, token, "disallowed algorithm")


def test_key_type_must_match_alg(
    verifier: TokenVerifier, issuer: LocalIssuer, rsa_key: rsa.RSAPrivateKey
) -> None:
    # RS256 is pinned, but the kid names the EC key: an RSA verification must never run with it.
    token = sign(claims(), rsa_key, "RS256", kid=issuer.kid)
    assert_rejected(verifier, token, "key does not match algorithm")


@pytest.mark.parametrize("alg", ["HS256", "HS512", "none", "NONE", "ES256K", "bogus"])
def test_unsafe_algorithms_cannot_be_configured(tmp_path: Path, issuer: LocalIssuer, alg: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        TokenVerifier.from_settings(Settings(data_dir=tmp_path, auth_algorithms=("RS256", alg)), issuer)


def test_symmetric_keys_in_a_jwks_are_ignored() -> None:
    keyset = parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}, {"kty": "EC", "use": "enc"}]})
    assert keyset.keys == ()


def test_crit_header_is_rejected(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = sign(claims(), issuer.private_key, "ES256", kid=issuer.kid, crit=["exp"])
    with pytest.raises(Unauthorized) as exc:
        asyncio.run(verifier.verify(token))
    # PyJWT may refuse the header first; either way no extension we do not implement is ignored.
    assert exc.value.detail in {"unsupported critical header", "malformed token"}


# --------------------------------------------------------------------------- keys


def test_signed_with_another_key_is_rejected(
    verifier: TokenVerifier, issuer: LocalIssuer, tmp_path: Path
) -> None:
    other = LocalIssuer.load_or_create(tmp_path / "other")
    assert_rejected(verifier, other.mint("acme", "u", [], 60, "facerec"), "unknown key id")
    # Same kid as the trusted key, wrong signature.
    forged = sign(claims(), other.private_key, "ES256", kid=issuer.kid)
    assert_rejected(verifier, forged, "invalid signature")


def test_tampered_payload_is_rejected(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint("acme", "u", [], 60, "facerec")
    header, _, signature = token.split(".")
    evil_payload = raw_token({}, claims(company_id="evil-corp")).split(".")[1]
    assert_rejected(verifier, f"{header}.{evil_payload}.{signature}", "invalid signature")


def test_unknown_kid_is_rejected(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = sign(claims(), issuer.private_key, "ES256", kid="not-a-known-kid")
    assert_rejected(verifier, token, "unknown key id")


def test_non_string_kid_is_rejected(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = raw_token({"alg": "ES256", "kid": 7}, claims(), b"sig")  # PyJWT will not encode such a header
    assert_rejected(verifier, token, "malformed token")


def test_single_key_set_accepts_token_without_kid(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = sign(claims(), issuer.private_key, "ES256")
    assert asyncio.run(verifier.verify(token)).company_id == "acme"


# --------------------------------------------------------------------------- claims


def test_wrong_issuer(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    assert_rejected(verifier, issuer.mint("acme", "u", [], 60, "facerec", "https://evil"), "wrong issuer")


def test_wrong_audience(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    assert_rejected(verifier, issuer.mint("acme", "u", [], 60, "another-api"), "wrong audience")


def test_audience_list_containing_ours_is_accepted(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = sign(claims(aud=["other", "facerec"]), issuer.private_key, "ES256", kid=issuer.kid)
    assert asyncio.run(verifier.verify(token)).user_id == "user-1"


def test_expired_beyond_leeway(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint("acme", "u", [], 60, "facerec", now=time.time() - 60 - 31 - 5)
    assert_rejected(verifier, token, "token expired")


def test_expired_within_leeway_is_accepted(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint("acme", "u", [], 60, "facerec", now=time.time() - 60 - 10)  # 10 s past exp, leeway 30
    assert asyncio.run(verifier.verify(token)).user_id == "u"


def test_not_yet_valid_beyond_leeway(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    now = int(time.time())
    token = sign(claims(nbf=now + 120, exp=now + 600), issuer.private_key, "ES256", kid=issuer.kid)
    assert_rejected(verifier, token, "token not yet valid")


def test_not_yet_valid_within_leeway_is_accepted(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    now = int(time.time())
    token = sign(claims(nbf=now + 10, exp=now + 600), issuer.private_key, "ES256", kid=issuer.kid)
    assert asyncio.run(verifier.verify(token)).user_id == "user-1"


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
def test_required_claims(verifier: TokenVerifier, issuer: LocalIssuer, claim: str) -> None:
    token = sign(claims(**{claim: None}), issuer.private_key, "ES256", kid=issuer.kid)
    assert_rejected(verifier, token, f"missing claim: {claim}")


@pytest.mark.parametrize("sub", ["", "   "])
def test_blank_sub_is_rejected(verifier: TokenVerifier, issuer: LocalIssuer, sub: str) -> None:
    token = sign(claims(sub=sub), issuer.private_key, "ES256", kid=issuer.kid)
    assert_rejected(verifier, token, "missing claim: sub")


def test_non_string_sub_is_rejected(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = sign(claims(sub=42), issuer.private_key, "ES256", kid=issuer.kid)
    assert_rejected(verifier, token, "invalid subject")


@pytest.mark.parametrize("company", [None, "", "  ", 17, ["acme"], {"id": "acme"}])
def test_missing_or_bad_company_claim(verifier: TokenVerifier, issuer: LocalIssuer, company: object) -> None:
    token = sign(claims(company_id=company), issuer.private_key, "ES256", kid=issuer.kid)
    assert_rejected(verifier, token, "missing company claim")


def test_custom_company_claim(tmp_path: Path, issuer: LocalIssuer) -> None:
    v = TokenVerifier.from_settings(Settings(data_dir=tmp_path, auth_company_claim="tenant"), issuer)
    token = issuer.mint("acme", "u", [], 60, "facerec", company_claim="tenant")
    assert asyncio.run(v.verify(token)).company_id == "acme"
    assert_rejected(v, issuer.mint("acme", "u", [], 60, "facerec"), "missing company claim")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"roles": ["face:read", "face:compare"]}, {"face:read", "face:compare"}),
        ({"roles": "face:read  face:compare"}, {"face:read", "face:compare"}),
        ({"roles": []}, set()),
        ({"roles": None}, set()),
        ({"roles": None, "scope": "openid face:update"}, {"openid", "face:update"}),
        ({"roles": ["face:read"], "scope": "face:update"}, {"face:read"}),
    ],
)
def test_roles(
    verifier: TokenVerifier, issuer: LocalIssuer, extra: dict[str, Any], expected: set[str]
) -> None:
    token = sign(claims(**extra), issuer.private_key, "ES256", kid=issuer.kid)
    assert asyncio.run(verifier.verify(token)).roles == frozenset(expected)


@pytest.mark.parametrize("roles", [17, ["face:read", 3], {"a": 1}])
def test_invalid_roles_claim(verifier: TokenVerifier, issuer: LocalIssuer, roles: object) -> None:
    token = sign(claims(roles=roles), issuer.private_key, "ES256", kid=issuer.kid)
    assert_rejected(verifier, token, "invalid roles claim")


def test_nested_roles_claim(tmp_path: Path, issuer: LocalIssuer) -> None:
    v = TokenVerifier.from_settings(
        Settings(data_dir=tmp_path, auth_roles_claim="realm_access.roles"), issuer
    )
    token = sign(
        claims(roles=None, realm_access={"roles": ["face:read"]}), issuer.private_key, "ES256", kid=issuer.kid
    )
    assert asyncio.run(v.verify(token)).roles == frozenset({"face:read"})


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "a.b", "....", "eyJhbGciOiJFUzI1NiJ9.e30", "x" * 20000, "eyJ9.eyJ9.eyJ9", ""],
)
def test_garbage_token(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(Unauthorized) as exc:
        asyncio.run(verifier.verify(token))
    assert exc.value.detail in {"malformed token", "token too large", "missing bearer token"}
    if token:
        assert token not in exc.value.detail


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("   ", "missing bearer token"),
        ("Bearer", "malformed authorization header"),
        ("Bearer ", "malformed authorization header"),
        ("Basic abc", "malformed authorization header"),
        ("Basic a.b.c", "malformed authorization header"),
        ("Bearer a.b", "malformed authorization header"),
        ("Bearer a.b.c d", "malformed authorization header"),
        ("Bearer a.b.c=", "malformed authorization header"),
        ("a.b.c", "malformed authorization header"),
    ],
)
def test_malformed_authorization_header(value: str | None, detail: str) -> None:
    with pytest.raises(Unauthorized) as exc:
        parse_authorization_header(value)
    assert exc.value.detail == detail


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_authorization_header_scheme_is_case_insensitive(scheme: str) -> None:
    assert parse_authorization_header(f"{scheme} aa.bb.cc") == "aa.bb.cc"
    assert parse_authorization_header(f"  {scheme}   aa.bb.cc  ") == "aa.bb.cc"


def test_header_to_principal(verifier: TokenVerifier, issuer: LocalIssuer) -> None:
    token = issuer.mint("acme", "u", ["face:read"], 60, "facerec")
    assert asyncio.run(verifier.verify(parse_authorization_header(f"Bearer {token}"))).roles == {"face:read"}


# --------------------------------------------------------------------------- configuration


def test_local_mode_needs_a_local_issuer(settings: Settings) -> None:
    with pytest.raises(ValueError, match="LocalIssuer"):
        TokenVerifier.from_settings(settings, None)


def test_local_mode_refuses_a_jwks_url(settings: Settings, issuer: LocalIssuer) -> None:
    with pytest.raises(ValueError, match="auth_issuer"):
        TokenVerifier.from_settings(settings.replace(auth_jwks_url="http://127.0.0.1:1/jwks"), issuer)


def _write_jwks(path: Path, *jwks: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(jwks)}))
    return path


def test_rs256_via_jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_file = _write_jwks(tmp_path / "jwks.json", rsa_jwk(rsa_key, "rsa-1"))
    settings = Settings(data_dir=tmp_path, auth_issuer=IDP, auth_jwks_file=jwks_file)
    v = TokenVerifier.from_settings(settings, None)
    token = sign(claims(iss=IDP, roles="face:read"), rsa_key, "RS256", kid="rsa-1")
    assert asyncio.run(v.verify(token)) == Principal("acme", "user-1", frozenset({"face:read"}))
    # The external issuer replaces the local one: a local token is not trusted any more.
    assert_rejected(v, sign(claims(), rsa_key, "RS256", kid="rsa-1"), "wrong issuer")


def test_jwks_file_with_several_keys_needs_kid(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())) | {"kid": "ec-1"}
    jwks_file = _write_jwks(tmp_path / "jwks.json", rsa_jwk(rsa_key, "rsa-1"), ec_jwk)
    v = TokenVerifier.from_settings(
        Settings(data_dir=tmp_path, auth_issuer=IDP, auth_jwks_file=jwks_file), None
    )
    assert_rejected(v, sign(claims(iss=IDP), rsa_key, "RS256"), "missing key id")
    assert asyncio.run(v.verify(sign(claims(iss=IDP), ec_key, "ES256", kid="ec-1"))).user_id == "user-1"
    assert asyncio.run(v.verify(sign(claims(iss=IDP), rsa_key, "RS256", kid="rsa-1"))).user_id == "user-1"


def test_jwk_alg_restriction_is_honoured(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_file = _write_jwks(tmp_path / "jwks.json", rsa_jwk(rsa_key, "rsa-1") | {"alg": "RS512"})
    settings = Settings(data_dir=tmp_path, auth_issuer=IDP, auth_jwks_file=jwks_file)
    v = TokenVerifier.from_settings(settings, None)
    assert_rejected(v, sign(claims(iss=IDP), rsa_key, "RS256", kid="rsa-1"), "key does not match algorithm")


def test_private_jwk_in_file_is_used_for_its_public_half(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    private_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key)) | {"kid": "rsa-1"}
    jwks_file = _write_jwks(tmp_path / "jwks.json", private_jwk)
    v = TokenVerifier.from_settings(
        Settings(data_dir=tmp_path, auth_issuer=IDP, auth_jwks_file=jwks_file), None
    )
    assert asyncio.run(v.verify(sign(claims(iss=IDP), rsa_key, "RS256", kid="rsa-1"))).user_id == "user-1"


def test_local_mode_adds_jwks_file_keys(
    tmp_path: Path, issuer: LocalIssuer, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks_file = _write_jwks(tmp_path / "jwks.json", rsa_jwk(rsa_key, "rsa-1"))
    v = TokenVerifier.from_settings(Settings(data_dir=tmp_path, auth_jwks_file=jwks_file), issuer)
    assert asyncio.run(v.verify(sign(claims(), rsa_key, "RS256", kid="rsa-1"))).user_id == "user-1"
    assert asyncio.run(v.verify(issuer.mint("acme", "u", [], 60, "facerec"))).user_id == "u"


# --------------------------------------------------------------------------- remote JWKS


@dataclass
class FakeIdp:
    """A JWKS (and OIDC discovery) endpoint on 127.0.0.1, with request counting."""

    jwks: dict[str, Any]
    base_url: str = ""
    hits: dict[str, int] = field(default_factory=dict)
    issuer: str | None = None
    # When set, a request waits for it (at most 5 s) and records whether it was released before answering.
    release: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)
    released: list[bool] = field(default_factory=list)

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/jwks.json"


@pytest.fixture
def idp(rsa_key: rsa.RSAPrivateKey) -> Iterator[FakeIdp]:
    state = FakeIdp(jwks={"keys": [rsa_jwk(rsa_key, "rsa-1")]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] = state.hits.get(self.path, 0) + 1
            state.entered.set()
            if state.release is not None:
                state.released.append(state.release.wait(5))
            if self.path == "/jwks.json":
                doc: object = state.jwks
            elif self.path == "/.well-known/openid-configuration":
                doc = {"issuer": state.issuer or state.base_url, "jwks_uri": state.jwks_url}
            else:
                self.send_error(404)
                return
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def remote_verifier(source: RemoteJwks, issuer: str = IDP) -> TokenVerifier:
    return TokenVerifier(source, issuers=[issuer], audience="facerec")


async def test_jwks_url_fetch_and_cache(tmp_path: Path, idp: FakeIdp, rsa_key: rsa.RSAPrivateKey) -> None:
    settings = Settings(data_dir=tmp_path, auth_issuer=IDP, auth_jwks_url=idp.jwks_url)
    v = TokenVerifier.from_settings(settings, None)
    token = sign(claims(iss=IDP, roles=["face:compare"]), rsa_key, "RS256", kid="rsa-1")
    assert await v.verify(token) == Principal("acme", "user-1", frozenset({"face:compare"}))
    assert await v.verify(token) == Principal("acme", "user-1", frozenset({"face:compare"}))
    assert idp.hits == {"/jwks.json": 1}


async def test_unknown_kid_refetches_at_most_once(idp: FakeIdp, rsa_key: rsa.RSAPrivateKey) -> None:
    now = [0.0]
    source = RemoteJwks(jwks_url=idp.jwks_url, min_refresh_s=30, clock=lambda: now[0])
    v = remote_verifier(source)
    assert (await v.verify(sign(claims(iss=IDP), rsa_key, "RS256", kid="rsa-1"))).user_id == "user-1"
    assert idp.hits["/jwks.json"] == 1
    now[0] += 31  # past the refetch rate limit, within the cache TTL

    unknown = sign(claims(iss=IDP), rsa_key, "RS256", kid="rotated-away")
    assert (await rejected(v, unknown)).detail == "unknown key id"
    assert idp.hits["/jwks.json"] == 2  # exactly one refetch
    # Rate-limited: more unknown kids, even concurrently, do not reach the IdP again.
    results = await asyncio.gather(*(v.verify(unknown) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, Unauthorized) and r.detail == "unknown key id" for r in results)
    assert idp.hits["/jwks.json"] == 2


async def test_concurrent_unknown_kids_share_one_refetch(idp: FakeIdp, rsa_key: rsa.RSAPrivateKey) -> None:
    source = RemoteJwks(jwks_url=idp.jwks_url, min_refresh_s=0)
    v = remote_verifier(source)
    await source.keys()
    assert idp.hits["/jwks.json"] == 1
    # Rotation: the IdP now publishes a second key.
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(new_key.public_key())) | {"kid": "ec-2"}
    idp.jwks = {"keys": [*idp.jwks["keys"], new_jwk]}
    token = sign(claims(iss=IDP), new_key, "ES256", kid="ec-2")
    results = await asyncio.gather(*(v.verify(token) for _ in range(8)))
    assert {r.user_id for r in results} == {"user-1"}
    assert idp.hits["/jwks.json"] == 2  # the waiters reused the first waiter's refetch


async def test_rotation_is_picked_up_after_the_rate_limit_window(
    idp: FakeIdp, rsa_key: rsa.RSAPrivateKey
) -> None:
    now = [1000.0]
    source = RemoteJwks(jwks_url=idp.jwks_url, min_refresh_s=30, ttl_s=300, clock=lambda: now[0])
    v = remote_verifier(source)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = sign(claims(iss=IDP), other, "RS256", kid="rsa-2")
    await v.verify(sign(claims(iss=IDP), rsa_key, "RS256", kid="rsa-1"))
    now[0] += 5
    idp.jwks = {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(other, "rsa-2")]}
    assert (await rejected(v, token)).detail == "unknown key id"  # within 30 s of the last fetch
    assert idp.hits["/jwks.json"] == 1
    now[0] += 30
    assert (await v.verify(token)).user_id == "user-1"
    assert idp.hits["/jwks.json"] == 2


async def test_cache_expires_after_ttl(idp: FakeIdp, rsa_key: rsa.RSAPrivateKey) -> None:
    now = [0.0]
    source = RemoteJwks(jwks_url=idp.jwks_url, ttl_s=300, clock=lambda: now[0])
    await source.keys()
    now[0] += 299
    await source.keys()
    assert idp.hits["/jwks.json"] == 1
    now[0] += 2
    await source.keys()
    assert idp.hits["/jwks.json"] == 2


async def test_oidc_discovery(tmp_path: Path, idp: FakeIdp, rsa_key: rsa.RSAPrivateKey) -> None:
    settings = Settings(data_dir=tmp_path, auth_issuer=idp.base_url)
    v = TokenVerifier.from_settings(settings, None)
    token = sign(claims(iss=idp.base_url), rsa_key, "RS256", kid="rsa-1")
    assert (await v.verify(token)).company_id == "acme"
    assert idp.hits == {"/.well-known/openid-configuration": 1, "/jwks.json": 1}


async def test_discovery_naming_another_issuer_is_not_trusted(
    idp: FakeIdp, rsa_key: rsa.RSAPrivateKey
) -> None:
    idp.issuer = "https://someone-else"
    v = remote_verifier(RemoteJwks(issuer=idp.base_url), issuer=idp.base_url)
    with pytest.raises(Unavailable):
        await v.verify(sign(claims(iss=idp.base_url), rsa_key, "RS256", kid="rsa-1"))
    assert "/jwks.json" not in idp.hits


async def test_unreachable_jwks_is_unavailable_and_not_hammered(rsa_key: rsa.RSAPrivateKey) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calls: list[str] = []

    def fetch(url: str, timeout_s: float) -> object:
        calls.append(url)
        raise ConnectionRefusedError("refused")

    v = remote_verifier(
        RemoteJwks(jwks_url=f"http://127.0.0.1:{port}/jwks.json", fetch=fetch, min_refresh_s=60)
    )
    token = sign(claims(iss=IDP), rsa_key, "RS256", kid="rsa-1")
    for _ in range(3):
        with pytest.raises(Unavailable):
            await v.verify(token)
    assert len(calls) == 1


async def test_real_connection_refused_is_unavailable(rsa_key: rsa.RSAPrivateKey) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    v = remote_verifier(RemoteJwks(jwks_url=f"http://127.0.0.1:{port}/jwks.json", timeout_s=2))
    with pytest.raises(Unavailable):
        await v.verify(sign(claims(iss=IDP), rsa_key, "RS256", kid="rsa-1"))


async def test_stale_keys_are_served_when_the_idp_fails(idp: FakeIdp, rsa_key: rsa.RSAPrivateKey) -> None:
    now = [0.0]
    v = remote_verifier(RemoteJwks(jwks_url=idp.jwks_url, ttl_s=10, clock=lambda: now[0]))
    token = sign(claims(iss=IDP), rsa_key, "RS256", kid="rsa-1")
    await v.verify(token)
    idp.jwks = {"oops": True}
    now[0] += 60
    assert (await v.verify(token)).user_id == "user-1"


async def test_fetch_does_not_block_the_event_loop(idp: FakeIdp, rsa_key: rsa.RSAPrivateKey) -> None:
    # The IdP answers only once the event loop releases it. A fetch on the loop's own thread would block the loop,
    # nothing could release the IdP, and it would answer after 5 s reporting that: no timing judged here.
    idp.release = threading.Event()
    v = remote_verifier(RemoteJwks(jwks_url=idp.jwks_url))
    verifying = asyncio.create_task(v.verify(sign(claims(iss=IDP), rsa_key, "RS256", kid="rsa-1")))
    assert await asyncio.wait_for(asyncio.to_thread(idp.entered.wait, 30), 60)
    idp.release.set()
    assert (await asyncio.wait_for(verifying, 60)).user_id == "user-1"
    assert idp.released == [True]


def test_non_http_urls_are_refused() -> None:
    from server.auth.verify import fetch_json

    with pytest.raises(ValueError, match="non-HTTP"):
        fetch_json("file:///etc/passwd", 1.0)
