#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA device and PyTorch (CI has none: there these tests skip).
# Run from the repository root. aptops goes into a scratch folder without its dependencies (the machine's own
# torch stays); wheels in .whl/ (scripts/gpu_wheels.sh: transformers, datasets, gguf ... as pinned in .venv) go in
# beside it.
#   1. every test marked `gpu`: bf16 training with the debugger tracking GPU memory, resume, distillation,
#      Wanda + masked fine-tuning, multimodal training, the Trainer bridge on CUDA;
#      torchrun with DDP and FSDP2 on the GPUs present (what a Kubeflow Trainer node runs);
#   2. the debug, distill and prune unit tests with CUDA visible (the default device paths).
# Results: $OUT (default /tmp/aptops-gpu-check): gpu.txt, JUnit XML and logs.
set -uo pipefail
OUT=${OUT:-/tmp/aptops-gpu-check}
SITE=${APTOPS_GPU_SITE:-/tmp/aptops-site}
mkdir -p "$OUT"
pip_target() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }
if compgen -G ".whl/*.whl" >/dev/null; then pip_target .whl/*.whl || exit 1; fi
pip_target --no-build-isolation . || exit 1
rm -rf build aptops.egg-info
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 APTOPS_NO_PROGRESS=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/gpu.txt"
status=0
timeout 300 python3 -m pytest -p no:cacheprovider -m gpu -v tests/unit/test_gpu.py tests/unit/plugins/test_hf_callback.py \
  --junitxml="$OUT/gpu-marked.xml" 2>&1 | tee "$OUT/gpu-marked.log" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" || true
[ "${PIPESTATUS[0]}" = 0 ] || status=1
timeout 240 python3 -m pytest -p no:cacheprovider -q -m "not integration" tests/unit/debug tests/unit/distill tests/unit/prune \
  --junitxml="$OUT/stages-with-cuda.xml" 2>&1 | tee "$OUT/stages-with-cuda.log" | tail -15
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit $status
