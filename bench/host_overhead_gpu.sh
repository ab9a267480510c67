#!/usr/bin/env bash
# Issue 14's GPU check, in one call of under 9 minutes on a fresh machine:
#
#   bench/host_overhead_gpu.sh OUTDIR
#
# 1. tests.log: on CUDA, the host-overhead tests (one launch per step, the lean launch against Triton's own path,
#    bitwise), the CUDA graph tests (the graph cache with real graphs; torch.cuda.graph and
#    torch.compile(mode="reduce-overhead") around forward and backward, both kernels) and the kernel tests.
# 2. host_overhead.csv / .md / bench.log: python3 -m bench.host_overhead (per-step and per-call times of cuDNN, the
#    per-step kernel through Triton's path, lean and graphed, and the persistent kernel; B 16/64/256, H 256/1024,
#    T 1/8/32/512, fp16 and fp32).
# Autotuning is off throughout (each kernel's default config).
# gpu.txt: nvidia-smi, versions, each step's exit status and duration. Set BENCH_GIT_COMMIT on a copied tree.
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."

TESTS_LIMIT=${TESTS_LIMIT:-200}
BENCH_BUDGET=${BENCH_BUDGET:-230}  # the benchmark starts no measurement after this; the rest are "skipped" rows
BENCH_LIMIT=${BENCH_LIMIT:-290}
export TRITON_DEFAULT_FP_FUSION=1
# Autotuning compiles and times every config per size: minutes on a fresh machine. Each kernel's default config.
export TRITON_LSTM_AUTOTUNE=0

{
    nvidia-smi 2>&1 | head -15
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    echo "commit ${BENCH_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
} > "$OUT/gpu.txt" 2>&1

step() {  # step NAME LIMIT COMMAND...: run with a time limit, record status and duration
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout -k 5 "$limit" "$@"
    local status=$?
    echo "$name: exit $status after $((SECONDS - start)) s (limit $limit s)" >> "$OUT/gpu.txt"
}

workers=""
if python3 -c "import xdist" 2>/dev/null; then
    workers="-n 4"
fi
# shellcheck disable=SC2086
step tests "$TESTS_LIMIT" python3 -m pytest -q -rs $workers conformance/test_host_overhead.py \
    conformance/test_graphs.py conformance/test_kernels.py > "$OUT/tests.log" 2>&1

step bench "$BENCH_LIMIT" python3 -m bench.host_overhead --out "$OUT" \
    --budget-s "$BENCH_BUDGET" > "$OUT/bench.log" 2>&1

cat "$OUT/gpu.txt"
tail -3 "$OUT/tests.log"
cat "$OUT/host_overhead.md" 2>/dev/null
