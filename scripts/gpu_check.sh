#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): attention kernels in bf16 against fp32, paper-size DiT
# training with DeepSpeed ZeRO-2 + FlexAttention + torch.compile (tokens/s, TFLOPS, MFU), sampling
# latency (F=16 s=0, F=128 s=5) and encoder clips/s. Under 8 minutes on one H100.
#   here, once:      bash scripts/gpu_wheels.sh
#   on the device:   bash scripts/gpu_check.sh            (carry .whl; writes $OUT/gpu_check.json)
#   on a CPU:        bash scripts/gpu_check.sh --tiny     (tiny shapes; tests/test_gpu_check.py runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
if [ -d .whl ] && ! python3 -c "import deepspeed" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ "${1:-}" = "--tiny" ] && export DS_ACCELERATOR=cpu
export PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
mkdir -p "$OUT"
set -o pipefail
python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
