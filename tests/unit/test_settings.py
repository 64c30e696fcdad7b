"""Strict settings: unknown variables, parse and range errors, one line per problem, masked secrets, the CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from server.settings import CHECKS, Settings, SettingsError, _choices, _hints, env_name, mask

ROOT = Path(__file__).resolve().parents[2]


def _problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    return err.value.problems


def test_defaults_are_valid() -> None:
    assert Settings.from_env({}) == Settings()


def test_a_misspelt_variable_is_an_error_naming_the_nearest_setting() -> None:
    (problem,) = _problems({"FACEREC_TRESHOLD": "0.9"})
    assert problem == "FACEREC_TRESHOLD: unknown setting; did you mean FACEREC_THRESHOLD?"


def test_an_unknown_variable_without_a_near_name_points_to_the_list() -> None:
    (problem,) = _problems({"FACEREC_FROBNICATE": "1"})
    assert "unknown setting" in problem and "facerec config" in problem


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("FACEREC_PORT", "99999", "FACEREC_PORT=99999: must be a port 1..65535"),
    ("FACEREC_PORT", "0", "FACEREC_PORT=0: must be a port 1..65535"),
    ("FACEREC_GRPC_PORT", "70000", "FACEREC_GRPC_PORT=70000: must be a port 1..65535 (or 0: disables gRPC)"),
    ("FACEREC_THRESHOLD", "1.5", "FACEREC_THRESHOLD=1.5: must be within 0..1"),
    ("FACEREC_THRESHOLD", "nan", "FACEREC_THRESHOLD=nan: must be a finite number"),
    ("FACEREC_MAX_IN_FLIGHT", "many", "FACEREC_MAX_IN_FLIGHT=many: must be an integer"),
    ("FACEREC_MAX_IN_FLIGHT", "-1", "FACEREC_MAX_IN_FLIGHT=-1: must be >= 0 (0 = auto)"),
    ("FACEREC_MAX_QUEUE", "64", "FACEREC_MAX_QUEUE: no longer a setting; admission is per request now: use "
                                "FACEREC_MAX_IN_FLIGHT (compares in flight)"),
    ("FACEREC_BACKEND", "tritn", "FACEREC_BACKEND=tritn: must be one of onnxruntime, triton"),
    ("FACEREC_LOG_FORMAT", "xml", "FACEREC_LOG_FORMAT=xml: must be one of text, json"),
    # AUTO is what a request says to get this setting: the setting itself must name a level.
    ("FACEREC_QUALITY_FILTER", "AUTO", "FACEREC_QUALITY_FILTER=AUTO: must be one of NONE, LOW, MEDIUM, HIGH"),
    ("FACEREC_DEMO", "yes", "FACEREC_DEMO=yes: must be one of auto, on, off"),
    ("FACEREC_LOG_LEVEL", "LOUD", "FACEREC_LOG_LEVEL=LOUD: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("FACEREC_DETECTOR_SIZE", "100", "FACEREC_DETECTOR_SIZE=100: must be a multiple of 32, at least 64"),
    ("FACEREC_TRITON_URL", "triton", "FACEREC_TRITON_URL=triton: must be host:port with a port 1..65535"),
    ("FACEREC_DATABASE_URL", "mysql://db/x", "FACEREC_DATABASE_URL=mysql://db/x: must be a URL starting with "
                                             "sqlite+aiosqlite:// or postgresql+asyncpg://"),
    ("FACEREC_DECODE_MEMORY_MB", "8", "FACEREC_DECODE_MEMORY_MB=8: must be >= 16"),
    ("FACEREC_MAX_HEADER_BYTES", "100", "FACEREC_MAX_HEADER_BYTES=100: must be >= 1024"),
    ("FACEREC_MAX_HEADER_COUNT", "2", "FACEREC_MAX_HEADER_COUNT=2: must be >= 8"),
    ("FACEREC_HEADER_TIMEOUT_S", "0", "FACEREC_HEADER_TIMEOUT_S=0: must be > 0"),
    ("FACEREC_BODY_TIMEOUT_S", "-1", "FACEREC_BODY_TIMEOUT_S=-1: must be > 0"),
    ("FACEREC_AUTH_MAX_TTL_S", "10", "FACEREC_AUTH_MAX_TTL_S=10: must be >= 60"),
])
def test_out_of_range_values_are_refused(var: str, value: str, expected: str) -> None:
    assert _problems({var: value}) == [expected]


def test_grpc_port_zero_means_off() -> None:
    assert Settings.from_env({"FACEREC_GRPC_PORT": "0"}).grpc_port == 0


def test_every_problem_is_reported_at_once_one_line_each() -> None:
    problems = _problems({"FACEREC_PORT": "99999", "FACEREC_TRESHOLD": "0.9", "FACEREC_MAX_WAIT_MS": "soon",
                          "FACEREC_MIN_FACE_PX": "0"})
    assert len(problems) == 4
    assert all("\n" not in p and p.startswith("FACEREC_") for p in problems)


def test_cross_field_rules() -> None:
    problems = _problems({"FACEREC_MAX_FILE_BYTES": "100", "FACEREC_MAX_REQUEST_BYTES": "10"})
    assert problems == ["FACEREC_MAX_REQUEST_BYTES must be >= FACEREC_MAX_FILE_BYTES"]


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(SettingsError, match="FACEREC_PORT=99999"):
        Settings(port=99999)
    with pytest.raises(ValueError, match="FACEREC_MAX_BATCH_SIZE"):
        Settings().replace(max_batch_size=-1)


def test_tooling_and_kubernetes_service_link_variables_are_not_settings() -> None:
    env = {"FACEREC_TOKEN": "x", "FACEREC_TEST_PG_URL": "postgresql://x", "FACEREC_BENCH_FOLDER": "/tmp",
           # enableServiceLinks injects these for Services named facerec-api / facerec-triton
           "FACEREC_API_SERVICE_HOST": "10.0.0.1", "FACEREC_API_SERVICE_PORT_HTTP": "8000",
           "FACEREC_API_PORT": "tcp://10.0.0.1:8000", "FACEREC_TRITON_PORT_8001_TCP_ADDR": "10.0.0.2"}
    assert Settings.from_env(env) == Settings()


def test_secrets_are_masked() -> None:
    url = "postgresql+asyncpg://facerec:s3cr3t@db:5432/facerec"
    settings = Settings.from_env({"FACEREC_DATABASE_URL": url})
    shown = dict((var, value) for var, value, _ in settings.describe())
    assert shown["FACEREC_DATABASE_URL"] == "postgresql+asyncpg://facerec:***@db:5432/facerec"
    assert mask("client_secret", "abc") == "***"
    problems = _problems({"FACEREC_DATABASE_URL": "mysql://u:s3cr3t@db/x"})
    assert "s3cr3t" not in problems[0] and "***" in problems[0]


def test_every_numeric_setting_has_a_rule() -> None:
    # A new int/float field needs one line in CHECKS (its range); Literal fields are checked by their choices.
    hints = _hints()
    for f in dataclasses.fields(Settings):
        hint = hints[f.name]
        base = {a for a in typing.get_args(hint) if a is not type(None)} or {hint}
        if base & {int, float}:
            assert f.name in CHECKS, f"add a range for {env_name(f.name)} to settings.CHECKS"
        if _choices(hint):
            assert f.name not in CHECKS or f.name == "log_level"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_serve_refuses_bad_settings_with_one_line_each_and_no_traceback() -> None:
    proc = _cli("serve", env={"FACEREC_PORT": "99999", "FACEREC_TRESHOLD": "0.9"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["facerec: invalid setting: FACEREC_TRESHOLD: unknown setting; did you mean FACEREC_THRESHOLD?",
                     "facerec: invalid setting: FACEREC_PORT=99999: must be a port 1..65535"]
    assert "Traceback" not in proc.stderr


def test_serve_flag_is_validated_like_the_variable() -> None:
    proc = _cli("serve", "--port", "99999", "--check", env={})
    assert proc.returncode == 2 and "must be a port 1..65535" in proc.stderr


def test_config_prints_effective_settings_masked() -> None:
    proc = _cli("config", env={"FACEREC_DATABASE_URL": "postgresql+asyncpg://u:pw123@db/x",
                               "FACEREC_THRESHOLD": "0.6"})
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert lines["FACEREC_THRESHOLD"] == "0.6"
    assert lines["FACEREC_PORT"] == "8000  # default"
    assert lines["FACEREC_DATABASE_URL"] == "postgresql+asyncpg://u:***@db/x"
    assert "pw123" not in proc.stdout
    assert {f"FACEREC_{f.name.upper()}" for f in dataclasses.fields(Settings)} == set(lines)


def test_serve_check_applies_the_flags_and_exits() -> None:
    proc = _cli("serve", "--check", "--port", "8123", "--grpc-port", "0", env={})
    assert proc.returncode == 0, proc.stderr
    assert "FACEREC_PORT=8123\n" in proc.stdout and "FACEREC_GRPC_PORT=0\n" in proc.stdout


# --------------------------------------------------------------------------- the hardening settings


def test_hardening_defaults() -> None:
    s = Settings()
    assert (s.max_header_bytes, s.max_header_count, s.header_timeout_s, s.body_timeout_s) == (32768, 100, 10.0, 60.0)
    assert (s.decode_memory_mb, s.auth_max_ttl_s) == (768, 86_400)


def test_hardening_settings_from_env() -> None:
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
def test_invalid_hardening_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize(("demo", "issuer", "page", "tokens"), [
    ("auto", None, True, True), ("auto", "https://idp.example.com", False, False),
    ("on", "https://idp.example.com", True, False), ("on", None, True, True), ("off", None, False, False),
])
def test_demo_page_and_token_button(demo: str, issuer: str | None, page: bool, tokens: bool) -> None:
    # The token button never exists without the local issuer, whatever FACEREC_DEMO says.
    env = {"FACEREC_DEMO": demo, **({"FACEREC_AUTH_ISSUER": issuer} if issuer else {})}
    s = Settings.from_env(env)
    assert (s.demo_enabled, s.demo_tokens) == (page, tokens)
