#!/usr/bin/env bash
# GPU check: the conformance suite on CUDA, the core benchmark sweep and its report, in under 8 minutes.
#
#   bench/gpu_check.sh OUTDIR
#
# Needs a machine with a GPU where python3 has torch and triton (no network, nothing installed). Outside a git
# checkout, set BENCH_GIT_COMMIT to the commit the tree was copied from: rows record it. Every step has a
# time limit, so the script always reaches the sweep and the report. OUTDIR gets 6 files:
#   gpu.txt          nvidia-smi, versions, and each step's exit status and duration
#   conformance.log  python3 -m pytest conformance/ -x -q  (TRITON_LSTM_AUTOTUNE=0: no autotune compile storms;
#                    -n 4 when pytest-xdist is installed)
#   sweep.csv        python3 -m bench --preset core        (schema in bench/README.md)
#   sweep.log        the sweep's progress and errors, then the report's output
#   report.md        tables made from sweep.csv
#   report.png       every plot in one figure (absent when matplotlib is missing; report.md says so)
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."

# Seconds. At worst 150 + 240 + 45 (+ 5 s grace each): under 8 minutes in all.
CONFORMANCE_LIMIT=${CONFORMANCE_LIMIT:-150}
SWEEP_BUDGET=${SWEEP_BUDGET:-200}  # the sweep starts no new measurement after this (what is left: "skipped" rows)
SWEEP_LIMIT=${SWEEP_LIMIT:-240}    # hard stop; the CSV keeps every row written before it
REPORT_LIMIT=${REPORT_LIMIT:-45}
PRESET=${PRESET:-core}
# Autotuning compiles and times every config of every kernel for each new size and dtype: minutes per size on a
# fresh machine, more than this check's budget. Rows record it in their env column.
export TRITON_LSTM_AUTOTUNE=${TRITON_LSTM_AUTOTUNE:-0}

# step NAME LIMIT LOG COMMAND...: run COMMAND under `timeout`, append its output to LOG and a summary to gpu.txt.
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS
    timeout -k 5 "$limit" "$@" >>"$log" 2>&1
    local status=$?
    local note=""
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        note=" (stopped at the ${limit}s limit)"
        echo "gpu_check: stopped at the ${limit}s limit" >>"$log"
    fi
    echo "$name: exit $status after $((SECONDS - start))s$note" | tee -a "$OUT/gpu.txt"
}

{
    nvidia-smi
    python3 -c 'import sys, torch, triton; print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__, "| cuda", torch.version.cuda, "| available", torch.cuda.is_available())'
    echo "TRITON_LSTM_AUTOTUNE=$TRITON_LSTM_AUTOTUNE"
} >"$OUT/gpu.txt" 2>&1

: >"$OUT/conformance.log"
: >"$OUT/sweep.log"
# Kernel compilation dominates the suite's time: with pytest-xdist installed, 4 workers compile in parallel.
PARALLEL=()
if python3 -c 'import xdist' 2>/dev/null; then
    PARALLEL=(-n 4)
fi
step conformance "$CONFORMANCE_LIMIT" "$OUT/conformance.log" \
    python3 -m pytest conformance/ -x -q -p no:cacheprovider ${PARALLEL[@]+"${PARALLEL[@]}"}
step sweep "$SWEEP_LIMIT" "$OUT/sweep.log" \
    python3 -m bench --preset "$PRESET" --out "$OUT/sweep.csv" --time-budget "$SWEEP_BUDGET"
step report "$REPORT_LIMIT" "$OUT/sweep.log" python3 -m bench.report "$OUT/sweep.csv" --out-dir "$OUT"
