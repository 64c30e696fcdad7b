"""Frozen service settings, built from ``FACEREC_*`` environment variables and passed in explicitly."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PACKAGE_ROOT = Path(__file__).resolve().parent
# The repository root when running from a checkout; model_repository/ lives beside server/.
PROJECT_ROOT = PACKAGE_ROOT.parent

Backend = Literal["onnxruntime", "triton"]
Device = Literal["auto", "cpu", "cuda"]


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
    triton_url: str = "127.0.0.1:8001"
    ort_intra_threads: int = 0  # 0 -> auto: the cores shared out between the three model sessions
    ort_inter_threads: int = 1
    detector_size: int = 640  # letterbox side fed to the detector, multiple of 32
    detector_score_threshold: float = 0.75
    min_face_px: int = 24  # faces with a shorter box side are ignored

    # --- decision
    threshold: float = 0.5  # on the calibrated 0..1 compare_similarity scale

    # --- batching
    max_batch_size: int = 0  # 0 -> auto: 16 on a GPU or Triton, 1 on CPU (batching only pays on accelerators)
    max_wait_ms: float = 5.0
    max_queue: int = 256

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
    log_level: str = "INFO"
    cors_origins: tuple[str, ...] = ()
    shutdown_grace_s: float = 20.0

    def __post_init__(self) -> None:
        # Fail at start-up with the variable's name rather than deep inside a request.
        checks = [
            (self.backend in ("onnxruntime", "triton"), "FACEREC_BACKEND must be onnxruntime or triton"),
            (self.device in ("auto", "cpu", "cuda"), "FACEREC_DEVICE must be auto, cpu or cuda"),
            (self.detector_size >= 64 and self.detector_size % 32 == 0,
             "FACEREC_DETECTOR_SIZE must be a multiple of 32, at least 64"),
            (0.0 <= self.threshold <= 1.0, "FACEREC_THRESHOLD must be within 0..1"),
            (self.max_batch_size >= 0, "FACEREC_MAX_BATCH_SIZE must be >= 0 (0 = auto)"),
            (self.max_wait_ms >= 0, "FACEREC_MAX_WAIT_MS must be >= 0"),
            (self.max_queue >= 1, "FACEREC_MAX_QUEUE must be >= 1"),
            (self.max_file_bytes >= 1 and self.max_request_bytes >= self.max_file_bytes,
             "FACEREC_MAX_REQUEST_BYTES must be >= FACEREC_MAX_FILE_BYTES >= 1"),
            (self.request_timeout_s > 0, "FACEREC_REQUEST_TIMEOUT_S must be > 0"),
            (self.decode_memory_mb >= 16, "FACEREC_DECODE_MEMORY_MB must be >= 16"),
            (self.max_header_bytes >= 1024, "FACEREC_MAX_HEADER_BYTES must be >= 1024"),
            (self.max_header_count >= 8, "FACEREC_MAX_HEADER_COUNT must be >= 8"),
            (self.header_timeout_s > 0 and self.body_timeout_s > 0,
             "FACEREC_HEADER_TIMEOUT_S and FACEREC_BODY_TIMEOUT_S must be > 0"),
            (self.auth_max_ttl_s >= 60, "FACEREC_AUTH_MAX_TTL_S must be >= 60"),
            (self.retention_days is None or self.retention_days >= 1, "FACEREC_RETENTION_DAYS must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

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

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``FACEREC_<FIELD>`` variables (upper-case field names); unknown ones are ignored."""
        env = os.environ if env is None else env
        kwargs: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"FACEREC_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kwargs[f.name] = _parse(f.name, str(f.type), raw)
        return cls(**kwargs)  # type: ignore[arg-type]


def _parse(name: str, type_name: str, raw: str) -> object:
    try:
        if "tuple" in type_name:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if "Path" in type_name:
            return Path(raw).expanduser()
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if "int | None" in type_name:
            return int(raw)
    except ValueError as exc:
        raise ValueError(f"FACEREC_{name.upper()}={raw!r} is not a valid {type_name}") from exc
    return raw
