"""Authentication and tenancy: JWT verification, the local token issuer and role checks."""

from server.auth.guard import (
    ALL_ROLES,
    ROLE_COMPARE,
    ROLE_DELETE,
    ROLE_READ,
    ROLE_UPDATE,
    require_role,
)
from server.auth.keys import LOCAL_ISSUER, LocalIssuer, jwk_thumbprint
from server.auth.verify import (
    SUPPORTED_ALGORITHMS,
    KeySet,
    KeySource,
    RemoteJwks,
    StaticKeys,
    TokenVerifier,
    VerificationKey,
    load_jwks_file,
    parse_authorization_header,
    parse_jwks,
)

__all__ = [
    "ALL_ROLES",
    "LOCAL_ISSUER",
    "ROLE_COMPARE",
    "ROLE_DELETE",
    "ROLE_READ",
    "ROLE_UPDATE",
    "SUPPORTED_ALGORITHMS",
    "KeySet",
    "KeySource",
    "LocalIssuer",
    "RemoteJwks",
    "StaticKeys",
    "TokenVerifier",
    "VerificationKey",
    "jwk_thumbprint",
    "load_jwks_file",
    "parse_authorization_header",
    "parse_jwks",
    "require_role",
]
