#!/usr/bin/env bash
# Wheels for scripts/gpu_check.sh on a GPU machine that has PyTorch but no registry access: the Python 3.12
# x86-64 builds of what aptops' GPU-pool stages import beyond such an image's stock packages, at the versions
# .venv holds (so the GPU run tests the same transformers / datasets / peft as CI). Into .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="transformers huggingface_hub tokenizers accelerate peft datasets dill multiprocess gguf plotly soundfile
      cffi pycparser httpx2 httpcore2 h11 anyio idna truststore click regex hf-xet"
pins=()
for p in $PKGS; do
  v=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")
  pins+=("$p==$v")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
ls .whl
