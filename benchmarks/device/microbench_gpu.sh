#!/usr/bin/env bash
# One prepared microbenchmark run on a CUDA GPU (made for an H100 or H200 machine), tables
# to $OUT. Needs Python with numpy, pandas, pyarrow, scipy and a CUDA build of torch; installs
# nothing. Exits 0 without measuring when there is no torch or no CUDA device.
#
#   OUT=/some/dir bash benchmarks/device/microbench_gpu.sh
#
# Writes $OUT/{gemm,context_attention,generation_attention,moe,custom_allreduce}_perf.parquet,
# $OUT/device.json and $OUT/microbench.log (7 files). Then, on any machine with the repo:
#   python -m benchmarks.device.compare_microbench $OUT --gpu h100_sxm   (or h200_sxm)
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/microbench_gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ! $PY -c 'import torch; print(torch.__version__, torch.cuda.is_available())'; then
    echo "microbench_gpu: no torch in $PY: nothing to measure"
    exit 0
fi
if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "microbench_gpu: torch sees no CUDA device: nothing to measure"
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/microbench.log"
# The prepared 'gpu' plan takes about a minute on an H100; 240 s is its hard limit.
set -o pipefail
PYTHONUNBUFFERED=1 timeout 240 $PY -m comem calibrate microbench --device cuda --out "$OUT" 2>&1 | tee -a "$OUT/microbench.log"
status=$?
ls -l "$OUT"
exit $status
