#!/usr/bin/env bash
# Builds the project's virtual environment in .venv from nothing (idempotent).
#
# detectron2 has no wheel for this Python/torch on the package index. We build the official v0.6
# Python sources (the `pb1-detectron2==0.6` sdist, which lacks detectron2/layers/csrc) with a
# minimal C++ stub module; ROIAlign and NMS then come from torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.breast_d2_env_ok"
REQ_HASH=$(cat requirements/*.txt scripts/setup_env.sh setup.py | sha256sum | cut -c1-16)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQ_HASH" ]]; then
  exit 0
fi
echo "[setup_env] building $VENV (first run takes a few minutes)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q -c requirements/constraints.txt)
# Keep the pip that venv brings (23.x): newer pips refuse the detectron2 sdist's direct-URL extra.
"${PIP[@]}" torch torchvision
"${PIP[@]}" pillow setuptools wheel
if ! "$VPY" -c "import detectron2" 2>/dev/null; then
  BUILD=$(mktemp -d)
  trap 'rm -rf "$BUILD"' EXIT
  "$VPY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
    --no-build-isolation -d "$BUILD" pb1-detectron2==0.6
  tar -xzf "$BUILD"/pb1-detectron2-0.6.tar.gz -C "$BUILD"
  SRC=$(find "$BUILD" -maxdepth 1 -type d -name 'pb1[-_]detectron2-0.6' | head -n1)
  mkdir -p "$SRC/detectron2/layers/csrc"
  cat > "$SRC/detectron2/layers/csrc/vision.cpp" <<'CPP'
// Minimal stand-in for detectron2's C++ ops: only the version helpers that Python imports.
#include <torch/extension.h>
namespace detectron2 {
std::string get_compiler_version() { return "stub"; }
std::string get_cuda_version() { return "none"; }
}  // namespace detectron2
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", &detectron2::get_compiler_version, "compiler version");
  m.def("get_cuda_version", &detectron2::get_cuda_version, "cuda version");
}
CPP
  FORCE_CUDA=0 MAX_JOBS=2 "${PIP[@]}" --no-build-isolation --no-deps "$SRC"
fi
"${PIP[@]}" -r requirements/requirements.txt -r requirements/test.txt
"${PIP[@]}" --no-deps -e .
"$VPY" -c "import detectron2, torch, segmentation_models_pytorch, SimpleITK, breast_d2" 
echo "$REQ_HASH" > "$STAMP"
echo "[setup_env] ready: $VENV"
