#!/usr/bin/env bash
# Prepares what bench/gpu_check.sh needs on a GPU machine that cannot reach the package index (git-ignored, never
# committed): run here, then carry the printed paths along with the repository.
#   bash bench/gpu_prepare.sh [--pairs N] [--python-version 3.12]
# - .whl/: wheels (for --python-version, manylinux x86_64) of the project's runtime dependencies that the device's
#   CUDA + PyTorch image lacks; gpu_check.sh installs them with --no-deps over that image's own numpy, OpenCV,
#   Pillow, onnxruntime, httpx, ...
# - bench/gpu_data/: the first N LFW dev pairs (images + pairs.csv) from ../shared/lfw-dev.
# onnxruntime-gpu is not among the wheels: its wheel (255-277 MB) is far over what a device call may carry; on
# such a machine the check uses onnxruntime's CUDA provider only if the image already has it.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=100
PYV=3.12
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
# What a device call carries (64 MiB in all, the tracked files included): the fp32 embedder (39 MB) does not fit
# beside the wheels, so the int8 one goes; gpu_check.sh runs it where fp32 is missing and says so.
CARRY=(.whl bench/gpu_data model_repository/.build.json model_repository/detector/1 model_repository/landmarker/1
       model_repository/embedder/1/model.int8.onnx)
du -cb "${CARRY[@]}" $(git ls-files) 2>/dev/null | tail -1 | awk '{printf "  carried + tracked: %.1f MiB (limit 64)\n", $1/1048576}'
printf 'carry:'; printf ' "%s"' "${CARRY[@]}"; echo
