"""The hardening settings: defaults, environment names and validation."""

from __future__ import annotations

import pytest

from server.settings import Settings


def test_defaults() -> None:
    s = Settings()
    assert (s.max_header_bytes, s.max_header_count, s.header_timeout_s, s.body_timeout_s) == (32768, 100, 10.0, 60.0)
    assert (s.decode_memory_mb, s.auth_max_ttl_s) == (768, 86_400)


def test_from_env() -> None:
    s = Settings.from_env({"FACEREC_MAX_HEADER_BYTES": "65536", "FACEREC_MAX_HEADER_COUNT": "50",
                           "FACEREC_HEADER_TIMEOUT_S": "2.5", "FACEREC_BODY_TIMEOUT_S": "120",
                           "FACEREC_DECODE_MEMORY_MB": "2048", "FACEREC_AUTH_MAX_TTL_S": "3600"})
    assert (s.max_header_bytes, s.max_header_count, s.header_timeout_s, s.body_timeout_s) == (65536, 50, 2.5, 120.0)
    assert (s.decode_memory_mb, s.auth_max_ttl_s) == (2048, 3600)


@pytest.mark.parametrize(("env", "named"), [
    ({"FACEREC_MAX_HEADER_BYTES": "100"}, "FACEREC_MAX_HEADER_BYTES"),
    ({"FACEREC_MAX_HEADER_COUNT": "2"}, "FACEREC_MAX_HEADER_COUNT"),
    ({"FACEREC_HEADER_TIMEOUT_S": "0"}, "FACEREC_HEADER_TIMEOUT_S"),
    ({"FACEREC_BODY_TIMEOUT_S": "-1"}, "FACEREC_BODY_TIMEOUT_S"),
    ({"FACEREC_DECODE_MEMORY_MB": "8"}, "FACEREC_DECODE_MEMORY_MB"),
    ({"FACEREC_AUTH_MAX_TTL_S": "10"}, "FACEREC_AUTH_MAX_TTL_S"),
])
def test_invalid_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Settings.from_env(env)
