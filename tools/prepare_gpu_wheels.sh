#!/usr/bin/env bash
# Download the wheels that tools/gpu_check.sh installs on a bare GPU machine with no
# package index (Python 3.12, manylinux x86_64), into DEST (default: .whl/ in the repo
# root, which git ignores).
#
#   bash tools/prepare_gpu_wheels.sh [DEST] [--all]
#
# By default: the project's dependencies that the GPU image lacks (trio and its
# outcome/sniffio, structlog, pyserial, tomli-w, cobs, pytest-trio, and setuptools to
# build this checkout there). The image already
# has NumPy, CuPy, scikit-learn, SciPy, joblib, threadpoolctl, pytest, hypothesis,
# attrs, idna and sortedcontainers; --all fetches those too (except NumPy and CuPy,
# which must match the image's CUDA), for an image without them (about 45 MB more).
# Versions are the ones this checkout's .venv runs, where it has them.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.whl
all=0
for arg in "$@"; do
    case "$arg" in
        --all) all=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) dest=$arg ;;
    esac
done

names=(trio outcome sniffio structlog pyserial tomli-w cobs pytest-trio setuptools)
if [[ $all == 1 ]]; then
    names+=(attrs sortedcontainers idna scikit-learn scipy joblib threadpoolctl pytest
            pluggy iniconfig packaging hypothesis)
fi

# Pin each to the version this checkout's virtual environment runs, if it has it.
freeze=$( (.venv/bin/python -m pip freeze 2>/dev/null || true) | tr '[:upper:]_' '[:lower:]-')
specs=()
for name in "${names[@]}"; do
    pinned=$(grep -E "^${name}==" <<<"$freeze" || true)
    specs+=("${pinned:-$name}")
done

download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d "$dest" "$1" 2>/dev/null
}

mkdir -p "$dest"
for spec in "${specs[@]}"; do
    # A pinned version without a cp312 wheel (cobs 1.2.2 is sdist-only): take the newest
    # wheel instead; the project's lower bounds still hold.
    download "$spec" || download "${spec%%==*}" || { echo "prepare_gpu_wheels: no wheel for $spec" >&2; exit 1; }
done
echo "prepare_gpu_wheels: $(ls "$dest"/*.whl | wc -l) wheels in $dest ($(du -sh "$dest" | cut -f1)):"
ls "$dest"
