"""Local token issuer: an ES256 signing key kept in the data directory, its public JWKS, and token minting."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.files import ensure_private_dir

log = logging.getLogger(__name__)

LOCAL_ISSUER = "facerec-local"
LOCAL_ALGORITHM = "ES256"
KEY_DIR_NAME = "auth"
KEY_FILE_NAME = "signing-key.pem"

_P256_COORD_BYTES = 32


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_jwk_members(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The required EC JWK members (RFC 7518 §6.2.1), exactly those the RFC 7638 thumbprint hashes."""
    numbers = public_key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(_P256_COORD_BYTES, "big")),
        "y": _b64url(numbers.y.to_bytes(_P256_COORD_BYTES, "big")),
    }


def jwk_thumbprint(members: dict[str, str]) -> str:
    """RFC 7638 thumbprint: SHA-256 of the required members, sorted, with no whitespace, base64url."""
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class LocalIssuer:
    """Mints ES256 tokens for local use; the verifier trusts its public key when no issuer is configured."""

    private_key: ec.EllipticCurvePrivateKey
    kid: str
    path: Path

    @classmethod
    def load_or_create(cls, data_dir: Path) -> LocalIssuer:
        """Load ``data_dir/auth/signing-key.pem``, creating it (mode 0600, dir 0700) the first time."""
        key_dir = Path(data_dir) / KEY_DIR_NAME
        ensure_private_dir(key_dir)  # and the data dir above it, when this creates it (`facerec token`)
        # An existing key dir is tightened outright: it holds the signing key.
        os.chmod(key_dir, 0o700)
        path = key_dir / KEY_FILE_NAME
        if not path.exists():
            _create_key_file(path)
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> LocalIssuer:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            # A key readable by others lets them mint tokens; tighten rather than refuse to start.
            log.warning("signing key %s had mode %o; setting 0600", path, mode)
            os.chmod(path, 0o600)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"{path} does not hold an EC P-256 private key")
        kid = jwk_thumbprint(_public_jwk_members(key.public_key()))
        return cls(private_key=key, kid=kid, path=path)

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK with ``kid``, ``alg`` and ``use``."""
        return {
            **_public_jwk_members(self.private_key.public_key()),
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        }

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWK Set (RFC 7517 §5) holding this issuer's key."""
        return {"keys": [self.public_jwk()]}

    def mint(  # noqa: PLR0917 - positional order is the documented call shape
        self,
        company: str,
        user: str,
        roles: Iterable[str],
        ttl_s: int,
        audience: str,
        issuer: str = LOCAL_ISSUER,
        *,
        company_claim: str = "company_id",
        roles_claim: str = "roles",
        now: float | None = None,
    ) -> str:
        """A signed ES256 JWT for ``user`` of ``company`` with ``roles``, valid ``ttl_s`` s from ``now``."""
        if not company or not user:
            raise ValueError("company and user must be non-empty")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        issued = int(time.time() if now is None else now)
        claims: dict[str, object] = {
            "iss": issuer,
            "aud": audience,
            "sub": user,
            company_claim: company,
            roles_claim: sorted(set(roles)),
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.private_key, algorithm=LOCAL_ALGORITHM, headers={"kid": self.kid})


def _create_key_file(path: Path) -> None:
    """Write a fresh key so that readers only ever see a complete file and concurrent creators agree on one.

    The PEM goes to a private temp file first; ``os.link`` then publishes it only if ``path`` does not
    exist yet, so when two processes race the loser's key is discarded and both load the winner's.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race; its key is the one to use
        except OSError:
            # Filesystems without hard links: O_EXCL still lets exactly one creator win.
            _create_exclusive(path, pem)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _create_exclusive(path: Path, pem: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
