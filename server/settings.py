"""Frozen service settings, built from ``FACEREC_*`` environment variables and passed in explicitly."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

PACKAGE_ROOT = Path(__file__).resolve().parent
# The repository root when running from a checkout; model_repository/ lives beside server/.
PROJECT_ROOT = PACKAGE_ROOT.parent

Backend = Literal["onnxruntime", "triton"]
Device = Literal["auto", "cpu", "cuda"]
LogFormat = Literal["text", "json"]
Tracing = Literal["off", "otlp", "console"]
QualityLevel = Literal["NONE", "LOW", "MEDIUM", "HIGH"]
DemoMode = Literal["auto", "on", "off"]
Precision = Literal["auto", "fp32", "int8"]


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facerec"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facerec"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of the service. Build with :meth:`from_env` or directly in tests."""

    # --- storage
    data_dir: Path = field(default_factory=_default_data_dir)
    database_url: str | None = None  # None -> SQLite file in data_dir
    retention_days: int | None = None

    # --- models and inference
    model_repository: Path = PROJECT_ROOT / "model_repository"
    model_cache_dir: Path = field(default_factory=_default_cache_dir)
    backend: Backend = "onnxruntime"
    device: Device = "auto"
    precision: Precision = "auto"  # auto -> int8 embedder on onnxruntime CPU with AVX2 or VNNI, else fp32
    triton_url: str = "127.0.0.1:8001"
    ort_intra_threads: int = 0  # 0 -> auto: the cores shared out between the three model sessions
    ort_inter_threads: int = 1
    detector_size: int = 640  # letterbox side fed to the detector, multiple of 32
    detector_score_threshold: float = 0.75
    min_face_px: int = 16  # faces with a shorter box side are ignored

    # --- decision (a compare request may set its own threshold and quality_filter)
    threshold: float = 0.5  # on the calibrated 0..1 compare_similarity scale
    # What quality_filter=AUTO (and a request without one) means; the levels are measured in README "Quality filter".
    quality_filter: QualityLevel = "LOW"

    # --- batching
    max_batch_size: int = 0  # 0 -> auto: 16 on a GPU or Triton, 1 on CPU (batching only pays on accelerators)
    max_wait_ms: float = 5.0

    # --- admission
    max_in_flight: int = 0  # compares in flight; 0 -> auto: 256 on a GPU or Triton, 32 per core on CPU

    # --- request limits
    max_file_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 24 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    min_image_side: int = 32
    max_image_side: int = 20_000
    request_timeout_s: float = 30.0
    # Bytes of pixels all compares together may be decoding or holding (server/inference/decode_budget.py);
    # sized so a 2-core / 4 GB pod stays under 1.5 GB with 16 worst-case compares in flight (bench/README.md).
    decode_memory_mb: int = 768
    # What a connection may cost before the app sees its request (enforced by server/api/http/protocol.py).
    max_header_bytes: int = 32 * 1024  # request line + headers; room for a 16 KiB token
    max_header_count: int = 100
    header_timeout_s: float = 10.0  # from connecting (or a request's first byte) to the end of its headers
    body_timeout_s: float = 60.0  # from the end of the headers to the end of the body

    # --- auth (no issuer -> local issuer with a key in data_dir)
    auth_issuer: str | None = None
    auth_audience: str = "facerec"
    auth_jwks_url: str | None = None
    auth_jwks_file: Path | None = None
    auth_company_claim: str = "company_id"
    auth_roles_claim: str = "roles"
    auth_algorithms: tuple[str, ...] = ("RS256", "ES256")
    auth_leeway_s: int = 30
    auth_max_ttl_s: int = 86_400  # longest token lifetime accepted (exp - iat, and exp - now)

    # --- serving
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 50051
    workers: int = 0  # serving processes on the ports; 0 -> auto: 1 per 2 cores on CPU, 1 on CUDA, 1 per core on Triton
    log_level: str = "INFO"
    log_format: LogFormat = "text"  # json: one JSON object per line (timestamp, level, logger, request_id, ...)
    tracing: Tracing = "off"  # otlp / console need the `otel` extra; OTEL_* variables configure the exporter
    cors_origins: tuple[str, ...] = ()
    shutdown_grace_s: float = 20.0
    # The /demo page: auto = on with the local issuer only (never in production with an OIDC issuer), on, off.
    demo: DemoMode = "auto"

    def __post_init__(self) -> None:
        # Fail at start-up with the variable's name rather than deep inside a request.
        problems = validate(self)
        if problems:
            raise SettingsError(problems)

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file used when no database URL is configured."""
        return self.data_dir / "facerec.sqlite3"

    @property
    def effective_database_url(self) -> str:
        """SQLAlchemy async URL of the scan store."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.sqlite_path}"

    @property
    def local_issuer(self) -> bool:
        """True when the server mints and trusts its own tokens."""
        return self.auth_issuer is None

    @property
    def demo_enabled(self) -> bool:
        """Whether ``/demo`` is served: ``on``, or ``auto`` with the local issuer."""
        return self.demo == "on" or (self.demo == "auto" and self.local_issuer)

    @property
    def demo_tokens(self) -> bool:
        """Whether the demo page may mint tokens (``POST /demo/token``): only ever with the local issuer."""
        return self.demo_enabled and self.local_issuer

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``FACEREC_<FIELD>`` variables (upper-case field names).

        Strict: an unknown ``FACEREC_*`` variable (a misspelt name would otherwise be ignored silently), a value
        that does not parse and a value out of range are all errors, collected into one :class:`SettingsError`
        with one line per problem.
        """
        env = os.environ if env is None else env
        known = {env_name(f.name): f.name for f in dataclasses.fields(cls)}
        hints = _hints()
        problems: list[str] = []
        kwargs: dict[str, object] = {}
        for var in sorted(env):
            if not var.startswith(ENV_PREFIX) or var in known or _foreign(var, env[var]):
                continue
            if var in REMOVED:
                problems.append(f"{var}: no longer a setting; {REMOVED[var]}")
                continue
            near = difflib.get_close_matches(var, list(known), n=1, cutoff=0.75)
            hint = f"; did you mean {near[0]}?" if near else " (see `facerec config` for every setting)"
            problems.append(f"{var}: unknown setting{hint}")
        for var, name in known.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                kwargs[name] = _parse(hints[name], raw.strip())
            except ValueError as exc:
                problems.append(f"{var}={_shown(name, raw)}: {exc}")
        if problems:  # report parse errors together with range errors of the values that did parse
            try:
                cls(**{k: v for k, v in kwargs.items()})  # type: ignore[arg-type]
            except SettingsError as exc:
                problems += exc.problems
            raise SettingsError(problems)
        return cls(**kwargs)  # type: ignore[arg-type]

    def describe(self) -> list[tuple[str, str, bool]]:
        """``(variable, value as it would be written, differs from the default)`` for every setting, secrets masked."""
        defaults = Settings()
        rows = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            rows.append((env_name(f.name), _shown(f.name, _unparse(value)), value != getattr(defaults, f.name)))
        return rows


# --------------------------------------------------------------------------- validation


ENV_PREFIX = "FACEREC_"
# Variables of the project's tooling that share the prefix but are not server settings.
TOOL_PREFIXES = ("FACEREC_TEST_", "FACEREC_BENCH_", "FACEREC_CLIENT_")
TOOL_VARIABLES = frozenset({"FACEREC_TOKEN"})
# Kubernetes service links (enableServiceLinks, on by default) inject <SERVICE>_SERVICE_HOST, <SERVICE>_PORT and
# <SERVICE>_PORT_<n>_<PROTO>* for every Service: with Services named facerec-* these start with FACEREC_.
_SERVICE_LINK = re.compile(
    r"FACEREC_[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_[A-Z]+)?)")
_SERVICE_LINK_VALUE = re.compile(r"(tcp|udp|sctp)://[^\s]+:\d+")
# Fields whose values never appear in `facerec config`, logs or errors (URLs show with their password masked).
SECRET_WORDS = ("password", "secret", "token", "private_key")


class SettingsError(ValueError):
    """Invalid configuration: one readable line per problem, each naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class Check:
    """One rule for one field: ``problem(value)`` is None when the value is fine, else why it is not."""

    def __init__(self, rule: str, ok: Callable[[Any], bool]) -> None:
        self.rule = rule
        self._ok = ok

    def problem(self, value: object) -> str | None:
        return None if self._ok(value) else f"must be {self.rule}"


def between(lo: float, hi: float) -> Check:
    return Check(f"within {lo:g}..{hi:g}", lambda v: lo <= v <= hi)


def at_least(lo: float, note: str = "") -> Check:
    return Check(f">= {lo:g}{note}", lambda v: v >= lo)


def above(lo: float) -> Check:
    return Check(f"> {lo:g}", lambda v: v > lo)


def port(*, zero: str | None = None) -> Check:
    """A TCP port 1..65535; ``zero`` documents what 0 means where 0 is allowed (e.g. "disables gRPC")."""
    lo = 0 if zero else 1
    return Check(f"a port 1..65535{f' (or 0: {zero})' if zero else ''}", lambda v: lo <= v <= 65535)


def host_port() -> Check:
    def ok(v: str) -> bool:
        host, sep, p = v.rpartition(":")
        return bool(sep and host and p.isdigit() and 1 <= int(p) <= 65535)

    return Check("host:port with a port 1..65535", ok)


def url(*schemes: str) -> Check:
    def ok(v: str) -> bool:
        parts = urlsplit(v)
        return parts.scheme in schemes and bool(parts.netloc or parts.path)

    return Check(f"a URL starting with {' or '.join(s + '://' for s in schemes)}", ok)


def one_of(*choices: str, case: bool = True) -> Check:
    allowed = set(choices) if case else {c.upper() for c in choices}
    return Check(f"one of {', '.join(choices)}", lambda v: (v if case else v.upper()) in allowed)


def multiple_of(step: int, lo: int) -> Check:
    return Check(f"a multiple of {step}, at least {lo}", lambda v: v >= lo and v % step == 0)


# One line per field that has a rule. Literal-typed fields (backend, device, log_format, ...) are checked against
# their choices automatically; every numeric field must appear here (tests/unit/test_settings.py checks it).
CHECKS: dict[str, Check] = {
    "database_url": url("sqlite+aiosqlite", "postgresql+asyncpg"),
    "retention_days": at_least(1),
    "triton_url": host_port(),
    "ort_intra_threads": at_least(0, " (0 = auto)"),
    "ort_inter_threads": at_least(1),
    "detector_size": multiple_of(32, 64),
    "detector_score_threshold": between(0, 1),
    "min_face_px": at_least(1),
    "threshold": between(0, 1),
    "max_batch_size": at_least(0, " (0 = auto)"),
    "max_wait_ms": between(0, 1000),
    "max_in_flight": at_least(0, " (0 = auto)"),
    "max_file_bytes": at_least(1),
    "max_request_bytes": at_least(1),
    "max_image_pixels": at_least(1),
    "min_image_side": at_least(1),
    "max_image_side": at_least(1),
    "request_timeout_s": above(0),
    "decode_memory_mb": at_least(16),
    "max_header_bytes": at_least(1024),
    "max_header_count": at_least(8),
    "header_timeout_s": above(0),
    "body_timeout_s": above(0),
    "auth_issuer": url("https", "http"),
    "auth_jwks_url": url("https", "http"),
    "auth_leeway_s": between(0, 600),
    "auth_max_ttl_s": at_least(60),
    "port": port(),
    "grpc_port": port(zero="disables gRPC"),
    "workers": between(0, 256),
    "log_level": one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", case=False),
    "shutdown_grace_s": at_least(0),
}

# Rules between fields: (fields involved, predicate, what must hold).
CROSS_CHECKS: tuple[tuple[tuple[str, ...], Callable[[Settings], bool], str], ...] = (
    (("max_request_bytes", "max_file_bytes"), lambda s: s.max_request_bytes >= s.max_file_bytes,
     "FACEREC_MAX_REQUEST_BYTES must be >= FACEREC_MAX_FILE_BYTES"),
    (("min_image_side", "max_image_side"), lambda s: s.min_image_side <= s.max_image_side,
     "FACEREC_MIN_IMAGE_SIDE must be <= FACEREC_MAX_IMAGE_SIDE"),
    (("precision", "backend"), lambda s: not (s.precision == "int8" and s.backend == "triton"),
     "FACEREC_PRECISION=int8 needs FACEREC_BACKEND=onnxruntime (Triton serves the fp32 models)"),
)


# Settings that existed once: a deployment still setting one is told what replaced it, not "did you mean".
REMOVED: dict[str, str] = {
    "FACEREC_MAX_QUEUE": "admission is per request now: use FACEREC_MAX_IN_FLIGHT (compares in flight)",
}


def env_name(field_name: str) -> str:
    """The environment variable of a field (``grpc_port`` -> ``FACEREC_GRPC_PORT``)."""
    return ENV_PREFIX + field_name.upper()


def validate(s: Settings) -> list[str]:
    """Every problem of ``s``, one line each (empty when valid)."""
    problems: list[str] = []
    hints = _hints()
    bad: set[str] = set()
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if value is None:
            continue
        choices = _choices(hints[f.name])
        check = CHECKS.get(f.name)
        why = None
        if choices and value not in choices:
            why = f"must be one of {', '.join(choices)}"
        elif check is not None:
            try:
                why = check.problem(value)
            except TypeError:
                why = f"has the wrong type ({type(value).__name__})"
        if why:
            bad.add(f.name)
            problems.append(f"{env_name(f.name)}={_shown(f.name, _unparse(value))}: {why}")
    for names, ok, message in CROSS_CHECKS:
        if not bad.intersection(names) and not ok(s):
            problems.append(message)
    return problems


def mask(field_name: str, text: str) -> str:
    """``text`` fit to show: secrets replaced, a URL's password masked."""
    if any(word in field_name for word in SECRET_WORDS):
        return "***" if text else ""
    parts = urlsplit(text)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return text


def _shown(field_name: str, raw: str) -> str:
    return mask(field_name, raw)


def _foreign(var: str, value: str) -> bool:
    """Variables with the prefix that are not meant for the server (tooling, Kubernetes service links)."""
    if var in TOOL_VARIABLES or var.startswith(TOOL_PREFIXES):
        return True
    return bool(_SERVICE_LINK.fullmatch(var)) or bool(_SERVICE_LINK_VALUE.fullmatch(value.strip()))


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _choices(hint: Any) -> tuple[str, ...]:
    """The allowed values of a Literal-typed field (also inside ``X | None``), else ()."""
    if typing.get_origin(hint) is Literal:
        return tuple(str(a) for a in typing.get_args(hint))
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            return tuple(str(a) for a in typing.get_args(arg))
    return ()


def _parse(hint: Any, raw: str) -> object:
    """The raw text of a variable as the field's type (``X | None`` parses as X)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    target = args[0] if typing.get_origin(hint) in (types.UnionType, typing.Union) and len(args) == 1 else hint
    if typing.get_origin(target) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if target is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be true or false")
    if target is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("must be an integer") from None
    if target is float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    if target is Path:
        return Path(raw).expanduser()
    return raw


def _unparse(value: object) -> str:
    """A value written back as its variable would hold it."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)
