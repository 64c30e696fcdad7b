"""Bearer JWT verification: pinned algorithms, JWKS keys (local, file, URL), claims to Principal."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from server.auth.keys import LOCAL_ISSUER, LocalIssuer
from server.domain import Principal
from server.errors import Unauthorized, Unavailable
from server.settings import Settings

log = logging.getLogger(__name__)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

# Only asymmetric algorithms: a shared-secret (HS*) or unsigned ("none") token must never be accepted.
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
SUPPORTED_ALGORITHMS = frozenset({*_RSA_ALGORITHMS, *_EC_CURVES, "EdDSA"})

# Bounds the work an unauthenticated caller can make us do; real tokens are a few KiB at most.
MAX_TOKEN_CHARS = 16 * 1024
MAX_JWKS_BYTES = 1024 * 1024
# Tokens cannot be revoked, so their lifetime is capped (FACEREC_AUTH_MAX_TTL_S); 24 h admits IdP defaults.
DEFAULT_MAX_TTL_S = 86_400
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------- header


def parse_authorization_header(value: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value (scheme case-insensitive)."""
    if value is None or not value.strip():
        raise _logged(Unauthorized("missing bearer token"))
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != "bearer" or not _TOKEN_RE.fullmatch(parts[1]):
        raise _logged(Unauthorized("malformed authorization header"))
    return parts[1]


def _logged(err: Unauthorized, token: str | None = None) -> Unauthorized:
    """Log why authentication failed (never the token itself), then hand the error back to raise.

    For issuer and audience mismatches the token's own (unverified) ``iss`` and ``aud`` are named: that is what
    an operator needs to fix an identity provider's configuration (e.g. Keycloak's default ``aud=account``).
    """
    seen = ""
    if token is not None and err.detail in ("wrong audience", "wrong issuer"):
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            claims = {}
        seen = f" (token iss={str(claims.get('iss'))[:200]!r}, aud={str(claims.get('aud'))[:200]!r})"
    log.info("authentication failed: %s%s", err.detail, seen, extra={"auth_failure": err.detail})
    return err


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key of a JWKS; ``alg`` is the JWK's own restriction, if it names one."""

    kid: str | None
    key: PublicKey
    alg: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class KeySet:
    """An immutable snapshot of trusted keys; identity tells a refreshed set from a stale one."""

    keys: tuple[VerificationKey, ...]


def parse_jwks(data: object) -> KeySet:
    """Public signing keys of a JWK Set document; symmetric, encryption-only and bad keys are skipped."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK Set: expected an object with a 'keys' list")
    keys: list[VerificationKey] = []
    for jwk in data["keys"]:
        key = _parse_jwk(jwk)
        if key is not None:
            keys.append(key)
    return KeySet(tuple(keys))


def _parse_jwk(jwk: object) -> VerificationKey | None:
    if not isinstance(jwk, Mapping):
        return None
    kty, use, kid, alg = jwk.get("kty"), jwk.get("use"), jwk.get("kid"), jwk.get("alg")
    if use not in (None, "sig") or (kid is not None and not isinstance(kid, str)):
        return None
    if alg is not None and alg not in SUPPORTED_ALGORITHMS:
        return None
    loaders: dict[str, Callable[[str], Any]] = {
        "RSA": RSAAlgorithm.from_jwk,
        "EC": ECAlgorithm.from_jwk,
        "OKP": OKPAlgorithm.from_jwk,
    }
    loader = loaders.get(kty) if isinstance(kty, str) else None
    if loader is None:
        return None  # "oct" (shared secrets) in particular is never trusted
    try:
        loaded = loader(json.dumps(dict(jwk)))
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        log.warning("skipping unusable JWK kid=%r: %s", kid, type(exc).__name__)
        return None
    public = _public_part(loaded)
    if public is None:
        return None
    return VerificationKey(kid=kid, key=public, alg=alg if isinstance(alg, str) else None)


def _public_part(key: object) -> PublicKey | None:
    # A JWKS file may hold private JWKs; verification only ever needs the public half.
    if isinstance(
        key,
        rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey,
    ):
        key = key.public_key()
    if isinstance(
        key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    ):
        return key
    return None


def key_fits_algorithm(key: PublicKey, alg: str) -> bool:
    """Whether ``key`` is of the type ``alg`` needs (so no key is ever reinterpreted under another family)."""
    if alg in _RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def load_jwks_file(path: Path) -> KeySet:
    """Keys of a local JWKS file."""
    return parse_jwks(json.loads(Path(path).read_text(encoding="utf-8")))


class KeySource(Protocol):
    """Where the verifier gets trusted keys."""

    async def keys(self) -> KeySet: ...

    async def refresh(self, stale: KeySet) -> KeySet | None:
        """A newer set than ``stale`` (refetching if allowed), or None when there is none to be had."""
        ...


class StaticKeys:
    """Keys fixed at startup (the local issuer and/or a JWKS file)."""

    def __init__(self, keyset: KeySet) -> None:
        self._keyset = keyset

    async def keys(self) -> KeySet:
        return self._keyset

    async def refresh(self, stale: KeySet) -> KeySet | None:
        return None


def fetch_json(url: str, timeout_s: float) -> object:
    """GET a JSON document (blocking; run it off the event loop)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"refusing non-HTTP(S) URL {url!r}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("document too large")
    return json.loads(body)


class RemoteJwks:
    """A JWKS fetched over HTTP(S) off the loop, cached ``ttl_s``, refetched at most every ``min_refresh_s``.

    Give ``jwks_url``, or ``issuer`` to find it by OIDC discovery
    (``<issuer>/.well-known/openid-configuration`` -> ``jwks_uri``).
    """

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        issuer: str | None = None,
        ttl_s: float = 300.0,
        min_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
        fetch: Callable[[str, float], object] = fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if jwks_url is None and issuer is None:
            raise ValueError("RemoteJwks needs jwks_url or issuer")
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._timeout_s = timeout_s
        self._fetch = fetch
        self._clock = clock
        self._keyset: KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0  # JWKS documents fetched; lets tests and metrics see refetches

    async def keys(self) -> KeySet:
        keyset = self._keyset
        if keyset is not None and self._clock() - self._fetched_at < self._ttl_s:
            return keyset
        async with self._lock:
            # Another waiter may have refreshed while we queued on the lock.
            if self._keyset is not None and self._clock() - self._fetched_at < self._ttl_s:
                return self._keyset
            # Retries are rate-limited too, so an unreachable IdP is not hammered once per request.
            if self._may_fetch():
                fresh = await self._fetch_keys()
                if fresh is not None:
                    return fresh
            if self._keyset is not None:
                return self._keyset  # stale, but the last good set beats refusing everyone
            raise Unavailable("token signing keys unavailable")

    async def refresh(self, stale: KeySet) -> KeySet | None:
        async with self._lock:
            if self._keyset is not None and self._keyset is not stale:
                return self._keyset  # someone refreshed since the caller looked
            if not self._may_fetch():
                return None  # rate limit: random kids must not turn us into a load generator for the IdP
            return await self._fetch_keys()

    def _may_fetch(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._min_refresh_s

    async def _fetch_keys(self) -> KeySet | None:
        self._attempted_at = self._clock()
        try:
            keyset = await asyncio.to_thread(self._fetch_sync)
        except (OSError, ValueError) as exc:
            log.warning("JWKS fetch failed: %s", exc)
            return None
        self.fetch_count += 1
        self._keyset = keyset
        self._fetched_at = self._clock()
        return keyset

    def _fetch_sync(self) -> KeySet:
        if self._jwks_url is None:
            self._jwks_url = self._discover()
        return parse_jwks(self._fetch(self._jwks_url, self._timeout_s))

    def _discover(self) -> str:
        assert self._issuer is not None
        doc = self._fetch(self._issuer.rstrip("/") + "/.well-known/openid-configuration", self._timeout_s)
        if not isinstance(doc, Mapping) or not isinstance(doc.get("jwks_uri"), str):
            raise ValueError("OIDC discovery document has no jwks_uri")
        # OIDC Discovery §4.3: a document naming another issuer must not be trusted.
        if doc.get("issuer") not in (None, self._issuer):
            raise ValueError("OIDC discovery document names a different issuer")
        return str(doc["jwks_uri"])


# --------------------------------------------------------------------------- verifier


class _UnknownKey(Unauthorized):
    """No key with the token's kid: the one failure worth a JWKS refetch (keys rotate)."""


_CLAIM_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "invalid signature"),
    (jwt.InvalidAlgorithmError, "disallowed algorithm"),
    (jwt.InvalidIssuedAtError, "invalid issued-at"),
    (jwt.exceptions.InvalidSubjectError, "invalid subject"),
    (jwt.DecodeError, "malformed token"),
)


class TokenVerifier:
    """Turns a bearer JWT into a :class:`Principal` or raises :class:`Unauthorized`."""

    def __init__(
        self,
        source: KeySource,
        *,
        issuers: Sequence[str],
        audience: str,
        algorithms: Sequence[str] = ("RS256", "ES256"),
        leeway_s: float = 30,
        company_claim: str = "company_id",
        roles_claim: str = "roles",
        max_ttl_s: float = DEFAULT_MAX_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        bad = [alg for alg in algorithms if alg not in SUPPORTED_ALGORITHMS]
        if bad or not algorithms:
            raise ValueError(f"unsupported token algorithms {bad}; allowed: {sorted(SUPPORTED_ALGORITHMS)}")
        if not issuers:
            raise ValueError("at least one trusted issuer is required")
        self._source = source
        self._issuers = frozenset(issuers)
        self._audience = audience
        self._algorithms = tuple(algorithms)
        self._leeway_s = leeway_s
        self._company_claim = company_claim
        self._roles_claim = roles_claim
        self._max_ttl_s = max_ttl_s
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, local_issuer: LocalIssuer | None) -> TokenVerifier:
        """Trust the local issuer (no ``auth_issuer``), else the issuer's JWKS (file, URL or discovery)."""
        source: KeySource
        if settings.local_issuer:
            if local_issuer is None:
                raise ValueError("no auth_issuer configured: a LocalIssuer is required")
            if settings.auth_jwks_url:
                raise ValueError("auth_jwks_url needs auth_issuer to be set")
            keys = parse_jwks(local_issuer.jwks()).keys
            if settings.auth_jwks_file is not None:
                keys += load_jwks_file(settings.auth_jwks_file).keys
            source = StaticKeys(KeySet(keys))
            issuers = [LOCAL_ISSUER]
        else:
            assert settings.auth_issuer is not None
            if settings.auth_jwks_file is not None:
                source = StaticKeys(load_jwks_file(settings.auth_jwks_file))
            elif settings.auth_jwks_url:
                source = RemoteJwks(jwks_url=settings.auth_jwks_url)
            else:
                source = RemoteJwks(issuer=settings.auth_issuer)
            issuers = [settings.auth_issuer]
        return cls(
            source,
            issuers=issuers,
            audience=settings.auth_audience,
            algorithms=settings.auth_algorithms,
            leeway_s=settings.auth_leeway_s,
            company_claim=settings.auth_company_claim,
            roles_claim=settings.auth_roles_claim,
            max_ttl_s=settings.auth_max_ttl_s,
        )

    @property
    def source(self) -> KeySource:
        """Where this verifier's keys come from."""
        return self._source

    async def verify(self, token: str) -> Principal:
        """Verify ``token`` against the current keys, refetching them once if its ``kid`` is unknown.

        Every failure is logged with its reason (never the token), so 401s can be debugged from the log.
        """
        try:
            keyset = await self._source.keys()
            try:
                return self.verify_with_keys(token, keyset)
            except _UnknownKey:
                fresh = await self._source.refresh(keyset)
                if fresh is None:
                    raise
                return self.verify_with_keys(token, fresh)
        except Unauthorized as exc:
            raise _logged(exc, token) from None

    def verify_with_keys(self, token: str, keyset: KeySet) -> Principal:
        """Verify ``token`` against ``keyset`` (no I/O)."""
        if not isinstance(token, str) or not token:
            raise Unauthorized("missing bearer token")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        # Checked before any key is touched: the token must not choose how it gets verified.
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthorized("disallowed algorithm")
        if "crit" in header:
            raise Unauthorized("unsupported critical header")  # RFC 7515 §4.1.11: we understand no extensions
        key = self._select_key(keyset, header.get("kid"), alg)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuers,
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"missing claim: {exc.claim}") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(_describe(exc)) from None
        self._check_lifetime(claims)
        return self._principal(claims)

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """Time claims are JSON numbers (PyJWT also takes numeric strings), and no token outlives the cap.

        The lifetime is ``exp - iat`` when ``iat`` is present, and ``exp`` may never lie further ahead than the cap
        (plus leeway) either, so leaving ``iat`` out or backdating it gains nothing.
        """
        for name in ("exp", "iat", "nbf"):
            if name in claims and not _is_time(claims[name]):
                raise Unauthorized(f"invalid claim: {name} must be a number")
        exp, iat = claims["exp"], claims.get("iat")
        if (iat is not None and exp - iat > self._max_ttl_s) or exp - self._clock() > self._max_ttl_s + self._leeway_s:
            raise Unauthorized("token lifetime over the limit")

    def _select_key(self, keyset: KeySet, kid: object, alg: str) -> VerificationKey:
        if kid is not None:
            if not isinstance(kid, str):
                raise Unauthorized("malformed token")
            matches = [k for k in keyset.keys if k.kid == kid]
            if not matches:
                raise _UnknownKey("unknown key id")
        elif len(keyset.keys) == 1:
            matches = list(keyset.keys)  # a single-key set needs no kid to be unambiguous
        else:
            raise Unauthorized("missing key id")
        for key in matches:
            if (key.alg is None or key.alg == alg) and key_fits_algorithm(key.key, alg):
                return key
        raise Unauthorized("key does not match algorithm")

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        company = _claim(claims, self._company_claim)
        if not isinstance(company, str) or not company.strip():
            raise Unauthorized("missing company claim")
        user = claims.get("sub")
        if not isinstance(user, str) or not user.strip():
            raise Unauthorized("missing claim: sub")
        return Principal(company_id=company, user_id=user, roles=self._roles(claims))

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        raw = _claim(claims, self._roles_claim)
        if raw is None:
            raw = claims.get("scope")  # OAuth2 scopes (RFC 8693 §4.2) when the IdP has no roles claim
            if raw is None:
                return frozenset()
        if isinstance(raw, str):
            return frozenset(raw.split())
        if isinstance(raw, list) and all(isinstance(r, str) for r in raw):
            return frozenset(raw)
        raise Unauthorized("invalid roles claim")


def _is_time(value: object) -> bool:
    # bool is an int to Python, not a NumericDate to JSON.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _claim(claims: Mapping[str, Any], name: str) -> object:
    """A claim by name, or by dotted path into nested objects (e.g. Keycloak's ``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    node: object = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _describe(exc: jwt.PyJWTError) -> str:
    for kind, detail in _CLAIM_ERRORS:
        if isinstance(exc, kind):
            return detail
    return "invalid token"
