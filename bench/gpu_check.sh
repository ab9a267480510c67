#!/usr/bin/env bash
# GPU check: the conformance suite on CUDA, a benchmark sweep and its report, and the persistent kernel's tilings
# timed, in under 9 minutes on a fresh machine.
#
#   bench/gpu_check.sh OUTDIR
#
# Needs a machine with a GPU where python3 has torch and triton (no network, nothing installed). On a copied tree,
# set BENCH_GIT_COMMIT to the commit it was copied from: rows record it (a copy's own .git may be stale).
#
# Kernel compilation (single-threaded, seconds per kernel) dominates a fresh machine, so the check runs in two
# phases. Phase 1, all at once: the conformance suite; the sweep run at T = 32 split over WARM_JOBS processes and
# the tilings run at T = 16 over TILE_JOBS processes, which only fill Triton's on-disk cache (sequence lengths are
# not part of any kernel's specialisation); two autotuned runs of one size, which print the chosen configs and show
# the second process reusing the first one's tuning. Phase 2, alone on the GPU: the sweep's timings, the tilings'
# timings, the report. Every step has a time limit. OUTDIR gets 8 files:
#   gpu.txt          nvidia-smi, versions, and each step's exit status and duration
#   conformance.log  python3 -m pytest conformance/ (-n CONFORMANCE_WORKERS with pytest-xdist)
#   autotune.log     TRITON_LSTM_AUTOTUNE=1 TRITON_PRINT_AUTOTUNING=1, the same run twice
#   sweep.csv        python3 -m bench $SWEEP_ARGS  (schema in bench/README.md)
#   sweep.log        the sweep's progress and errors, the compile runs' last lines, the report's output
#   tiles.csv        python3 -m bench.persistent_tiles $TILE_ARGS
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
WORK=$(mktemp -d)

# Seconds. At worst 240 + 180 + 75 + 25 (+ 5 s grace each): 9 minutes.
CONFORMANCE_LIMIT=${CONFORMANCE_LIMIT:-240}
CONFORMANCE_WORKERS=${CONFORMANCE_WORKERS:-8}
WARM_LIMIT=${WARM_LIMIT:-220}   # phase 1's compile runs stop here; phase 2 compiles whatever they did not reach
WARM_JOBS=${WARM_JOBS:-6}
TILE_JOBS=${TILE_JOBS:-3}
AUTOTUNE_RUNS=${AUTOTUNE_RUNS:-2}
SWEEP_BUDGET=${SWEEP_BUDGET:-140}  # the sweep starts no new measurement after this (what is left: "skipped" rows)
SWEEP_LIMIT=${SWEEP_LIMIT:-180}    # hard stop; the CSV keeps every row written before it
TILES_BUDGET=${TILES_BUDGET:-50}
TILES_LIMIT=${TILES_LIMIT:-75}
REPORT_LIMIT=${REPORT_LIMIT:-25}
SWEEP_ARGS=${SWEEP_ARGS:---preset core}
TILE_ARGS=${TILE_ARGS:---dtype fp16,fp32 --hidden-size 256,1024 --batch 16}
# Autotuning compiles and times every config of every kernel for each new size and dtype: minutes per size on a
# fresh machine, more than this check's budget. Rows record it in their env column; autotune.log shows tuning.
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
    echo "TRITON_LSTM_AUTOTUNE=$TRITON_LSTM_AUTOTUNE SWEEP_ARGS=$SWEEP_ARGS TILE_ARGS=$TILE_ARGS"
} >"$OUT/gpu.txt" 2>&1

: >"$OUT/conformance.log"
: >"$OUT/sweep.log"
: >"$OUT/autotune.log"
PARALLEL=()
if python3 -c 'import xdist' 2>/dev/null; then
    PARALLEL=(-n "$CONFORMANCE_WORKERS")
fi

# Phase 1.
step conformance "$CONFORMANCE_LIMIT" "$OUT/conformance.log" \
    python3 -m pytest conformance/ -q -rfE --tb=short --durations=10 -p no:cacheprovider \
    --continue-on-collection-errors ${PARALLEL[@]+"${PARALLEL[@]}"} &
for ((i = 0; i < WARM_JOBS; i++)); do
    # shellcheck disable=SC2086  # SWEEP_ARGS is a list of flags
    step "compile sweep $i/$WARM_JOBS" "$WARM_LIMIT" "$WORK/warm-$i.log" \
        python3 -m bench $SWEEP_ARGS --seq-len 32 --modes forward,forward_backward --shard "$i/$WARM_JOBS" \
        --out "$WORK/warm-$i.csv" &
done
for ((i = 0; i < TILE_JOBS; i++)); do
    # shellcheck disable=SC2086
    step "compile tiles $i/$TILE_JOBS" "$WARM_LIMIT" "$WORK/tiles-$i.log" \
        python3 -m bench.persistent_tiles $TILE_ARGS --compile-only --shard "$i/$TILE_JOBS" &
done
(
    for ((run = 1; run <= AUTOTUNE_RUNS; run++)); do
        echo "=== autotuned run $run" >>"$OUT/autotune.log"
        TRITON_LSTM_AUTOTUNE=1 TRITON_PRINT_AUTOTUNING=1 step "autotuned run $run" "$WARM_LIMIT" \
            "$OUT/autotune.log" python3 -m bench --batch 16 --hidden-size 256 --seq-len 64 --dtype fp16 --packed 0 \
            --providers triton_step --out "$WORK/autotune-$run.csv"
        python3 -c 'import csv, sys
for row in csv.DictReader(open(sys.argv[1])):
    print(row["provider"], row["mode"], row["status"], "first call", row["first_call_s"], "s")' \
            "$WORK/autotune-$run.csv" >>"$OUT/autotune.log" 2>&1
    done
) &
wait

# Phase 2.
# shellcheck disable=SC2086
step sweep "$SWEEP_LIMIT" "$OUT/sweep.log" \
    python3 -m bench $SWEEP_ARGS --out "$OUT/sweep.csv" --time-budget "$SWEEP_BUDGET"
# shellcheck disable=SC2086
step tiles "$TILES_LIMIT" "$OUT/sweep.log" \
    python3 -m bench.persistent_tiles $TILE_ARGS --out "$OUT/tiles.csv" --time-budget "$TILES_BUDGET"
step report "$REPORT_LIMIT" "$OUT/sweep.log" python3 -m bench.report "$OUT/sweep.csv" --out-dir "$OUT"
for log in "$WORK"/warm-*.log "$WORK"/tiles-*.log; do
    { echo "=== last lines of $(basename "$log")"; tail -n 5 "$log"; } >>"$OUT/sweep.log"
done
rm -rf "$WORK"
