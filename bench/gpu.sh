#!/usr/bin/env bash
# GPU figures on a machine with one CUDA device, run as is from the repository root:
#   bash bench/gpu.sh
# Installs nothing beyond the project (scripts/bootstrap.sh: the project and its extras),
# then prints bench/gpu.py's table (torch fp32, bf16/fp16 autocast, ONNX Runtime CUDA and
# TensorRT providers when installed; batch 1/8/32/64 at 256 px; GPU vs CPU JPEG decode) and
# the pipeline bench with the worker on the GPU. Exits with "no CUDA device" without one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
python - <<'PY' || { echo "no CUDA device" >&2; exit 1; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python bench/gpu.py
python bench/pipeline.py --device cuda --runtime torch --baseline
if python -c "import onnxruntime, sys; sys.exit('CUDAExecutionProvider' not in onnxruntime.get_available_providers())"; then
    python bench/pipeline.py --device cuda --runtime onnxruntime
fi
