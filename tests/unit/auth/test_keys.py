from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import stat
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.auth import LOCAL_ISSUER, LocalIssuer, jwk_thumbprint

from .conftest import b64url


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pem(issuer: LocalIssuer) -> bytes:
    return issuer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_key_created_once_with_private_permissions(tmp_path: Path) -> None:
    first = LocalIssuer.load_or_create(tmp_path)
    path = tmp_path / "auth" / "signing-key.pem"
    assert first.path == path
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    content = path.read_bytes()

    second = LocalIssuer.load_or_create(tmp_path)
    assert second.kid == first.kid
    assert _pem(second) == _pem(first)
    assert path.read_bytes() == content
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing-key.pem"]  # no temp files left


def test_creates_missing_data_dir(tmp_path: Path) -> None:
    issuer = LocalIssuer.load_or_create(tmp_path / "a" / "b")
    assert issuer.path.exists()


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    issuer = LocalIssuer.load_or_create(tmp_path)
    os.chmod(issuer.path, 0o644)
    os.chmod(issuer.path.parent, 0o755)
    again = LocalIssuer.load_or_create(tmp_path)
    assert again.kid == issuer.kid
    assert _mode(issuer.path) == 0o600
    assert _mode(issuer.path.parent) == 0o700


def test_losing_a_creation_race_adopts_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = ec.generate_private_key(ec.SECP256R1())
    winner_pem = winner.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    real_link = os.link

    def racing_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # Another process publishes its key between our existence check and our link.
        Path(dst).write_bytes(winner_pem)
        os.chmod(dst, 0o600)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    issuer = LocalIssuer.load_or_create(tmp_path)
    assert _pem(issuer) == winner_pem
    assert [p.name for p in issuer.path.parent.iterdir()] == ["signing-key.pem"]


def _load_kid(data_dir: str) -> str:
    return LocalIssuer.load_or_create(Path(data_dir)).kid


def test_concurrent_processes_agree_on_one_key(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=8, mp_context=ctx) as pool:
        kids = list(pool.map(_load_kid, [str(tmp_path)] * 16))
    assert len(set(kids)) == 1
    assert kids[0] == LocalIssuer.load_or_create(tmp_path).kid
    assert [p.name for p in (tmp_path / "auth").iterdir()] == ["signing-key.pem"]


def test_rejects_a_key_of_another_kind(tmp_path: Path) -> None:
    key_dir = tmp_path / "auth"
    key_dir.mkdir()
    other = ec.generate_private_key(ec.SECP384R1())
    (key_dir / "signing-key.pem").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(key_dir / "signing-key.pem", 0o600)
    with pytest.raises(ValueError, match="P-256"):
        LocalIssuer.load_or_create(tmp_path)


def test_kid_is_the_rfc7638_thumbprint(issuer: LocalIssuer) -> None:
    jwk = issuer.jwks()["keys"][0]
    numbers = issuer.private_key.public_key().public_numbers()
    assert jwk["x"] == b64url(numbers.x.to_bytes(32, "big"))
    assert jwk["y"] == b64url(numbers.y.to_bytes(32, "big"))
    # Written out by hand (member order and no whitespace are what RFC 7638 §3 prescribes).
    canonical = '{"crv":"P-256","kty":"EC","x":"' + jwk["x"] + '","y":"' + jwk["y"] + '"}'
    assert issuer.kid == b64url(hashlib.sha256(canonical.encode()).digest())
    assert jwk_thumbprint({"y": jwk["y"], "x": jwk["x"], "kty": "EC", "crv": "P-256"}) == issuer.kid


def test_rfc7638_example_thumbprint() -> None:
    # The RSA example of RFC 7638 §3.1 checks the canonicalisation against a published value.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZ"
        "Hzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kE"
        "gU8awapJzKnqDKgw"
    )
    assert (
        jwk_thumbprint({"e": "AQAB", "kty": "RSA", "n": n}) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    )


def test_jwks_is_public_only(issuer: LocalIssuer) -> None:
    jwks = issuer.jwks()
    assert len(jwks["keys"]) == 1
    jwk = jwks["keys"][0]
    assert "d" not in jwk
    assert jwk == {**jwk, "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": issuer.kid}
    public = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwk))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == issuer.private_key.public_key().public_numbers()


def test_mint_claims_and_header(issuer: LocalIssuer) -> None:
    now = time.time()
    token = issuer.mint("acme", "alice", ["face:read", "face:compare", "face:read"], 600, "facerec", now=now)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"] == issuer.kid
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["iss"] == LOCAL_ISSUER == "facerec-local"
    assert payload["aud"] == "facerec"
    assert payload["sub"] == "alice"
    assert payload["company_id"] == "acme"
    assert payload["roles"] == ["face:compare", "face:read"]
    assert payload["exp"] - payload["iat"] == 600
    assert payload["nbf"] == payload["iat"] == int(now)
    assert payload["jti"]
    # The signature really is by the stored key.
    jwt.decode(token, issuer.private_key.public_key(), algorithms=["ES256"], audience="facerec")


def test_mint_custom_issuer_and_claim_names(issuer: LocalIssuer) -> None:
    token = issuer.mint(
        "acme", "bob", [], 60, "api", "other-iss", company_claim="tenant", roles_claim="perms"
    )
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["iss"] == "other-iss"
    assert payload["tenant"] == "acme"
    assert payload["perms"] == []


@pytest.mark.parametrize(("company", "user", "ttl"), [("", "u", 60), ("c", "", 60), ("c", "u", 0)])
def test_mint_rejects_bad_arguments(issuer: LocalIssuer, company: str, user: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        issuer.mint(company, user, [], ttl, "facerec")
