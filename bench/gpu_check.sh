#!/usr/bin/env bash
# GPU check: the conformance suite on CUDA, the step-latency floor, the benchmark sweep with every provider and its
# report, in about 8 minutes (at most 9) on a fresh machine.
#
#   bench/gpu_check.sh OUTDIR
#
# Needs a machine with a GPU where python3 has torch and triton (no network). FlashRNN, which that machine lacks,
# is installed from the wheels in bench/wheels/ when there are any (bench/README.md: `bench/fetch_wheels.sh`; the
# device tool must carry that ignored folder); without them its rows are `skipped` with the reason. On a copied
# tree, set BENCH_GIT_COMMIT to the commit it was copied from: rows record it (a copy's own .git may be stale).
#
# Compilation (Triton kernels, torch.compile's graphs, FlashRNN's CUDA extensions: seconds to minutes each,
# mostly single-threaded) dominates a fresh machine, so the check runs in two phases. Phase 1, all at once: the
# conformance suite; `python -m bench --compile-only` over the sweep's configurations split over WARM_JOBS
# processes (every provider but FlashRNN) and over FLASHRNN_JOBS processes (FlashRNN alone: its build and tile
# search take minutes a size), each call at T <= 32, which only fills the on-disk caches (no kernel specialises on
# the sequence length) and leaves a marker per provider and configuration built; the floor kernel's compilation.
# Phase 2, alone on the GPU: the floor (`python -m bench.floor`), the sweep's timings (FlashRNN only where phase 1
# built it: BENCH_REQUIRE_WARM; the others compile what phase 1 did not reach), the report. Every step has a time
# limit. OUTDIR gets at most 8 files (what the device tool brings back):
#   gpu.txt          nvidia-smi, versions, and each step's exit status and duration
#   conformance.log  python3 -m pytest conformance/ (-n CONFORMANCE_WORKERS with pytest-xdist)
#   floor.csv        python3 -m bench.floor $SWEEP_ARGS  (us a step of the grid barrier, and barrier + h read)
#   sweep.csv        python3 -m bench $SWEEP_ARGS  (schema in bench/README.md)
#   sweep.log        the sweep's and the floor's progress and errors, the compile runs' last lines, the report's
#   report.md        tables made from sweep.csv and floor.csv: ratios to cuDNN, the best peer and the floor
#   report.png       ours vs every peer along each axis (absent when matplotlib is missing; report.md says so)
#   autotune.log     only with AUTOTUNE_RUNS > 0; or tiles.csv, only with TILE_ARGS set (not both: 9 files)
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)

# Seconds. At worst max(220, 220) + 40 + 230 + 20 (+ 5 s grace each): 8.9 minutes; typically about 7.
CONFORMANCE_LIMIT=${CONFORMANCE_LIMIT:-220}  # 0: no conformance run (e.g. the second run of --preset core)
CONFORMANCE_WORKERS=${CONFORMANCE_WORKERS:-6}
WARM_LIMIT=${WARM_LIMIT:-220}   # phase 1's compile runs stop here; phase 2 compiles whatever they did not reach
WARM_JOBS=${WARM_JOBS:-6}
FLASHRNN_JOBS=${FLASHRNN_JOBS:-3}
FLOOR_LIMIT=${FLOOR_LIMIT:-40}
SWEEP_BUDGET=${SWEEP_BUDGET:-190}  # the sweep starts no new measurement after this (what is left: "skipped" rows)
SWEEP_LIMIT=${SWEEP_LIMIT:-230}    # hard stop; the CSV keeps every row written before it
REPORT_LIMIT=${REPORT_LIMIT:-20}
# The configurations (python -m bench's preset and axis flags, --providers, --part). naive (an eager loop) is left
# out by default: compiled_cell is the loop a user would write, and naive's rows would cost half a minute.
SWEEP_ARGS=${SWEEP_ARGS:---preset quick}
EXCLUDE=${EXCLUDE-naive}
AUTOTUNE_RUNS=${AUTOTUNE_RUNS:-0}
TILE_ARGS=${TILE_ARGS:-}           # e.g. "--dtype fp16,fp32 --hidden-size 256,1024 --batch 16" (issue 4's tilings)
TILES_BUDGET=${TILES_BUDGET:-50}
TILES_LIMIT=${TILES_LIMIT:-75}
# Autotuning compiles and times every config of every kernel for each new size and dtype: minutes per size on a
# fresh machine, more than this check's budget. Rows record it in their env column; autotune.log shows tuning.
export TRITON_LSTM_AUTOTUNE=${TRITON_LSTM_AUTOTUNE:-0}
export BENCH_WARM_DIR=$WORK/warm
EXCLUDE_FLASHRNN=flashrnn${EXCLUDE:+,$EXCLUDE}

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
    echo "TRITON_LSTM_AUTOTUNE=$TRITON_LSTM_AUTOTUNE SWEEP_ARGS=$SWEEP_ARGS EXCLUDE=$EXCLUDE TILE_ARGS=$TILE_ARGS"
} >"$OUT/gpu.txt" 2>&1

: >"$OUT/sweep.log"
# Wheels brought along (FlashRNN: pure Python; its CUDA code is built on first use with the machine's nvcc).
if compgen -G "bench/wheels/*.whl" >/dev/null; then
    step "install bench/wheels" 120 "$OUT/sweep.log" python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --target "$WORK/site" bench/wheels/*.whl
    export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "no bench/wheels/*.whl: providers that need them are skipped" | tee -a "$OUT/gpu.txt"
fi
# FlashRNN builds its CUDA code against cuBLAS (and torch's CUDA headers): where the toolkit lacks those headers and
# unversioned libraries, point its build at pip's nvidia packages (bench/cuda_paths.py).
python3 -m bench.cuda_paths "$WORK/lib" >"$WORK/cuda_paths.sh" 2>>"$OUT/sweep.log"
cat "$WORK/cuda_paths.sh" >>"$OUT/gpu.txt"
# shellcheck disable=SC1091
. "$WORK/cuda_paths.sh"
# Providers (available, or why not), configurations, time estimate: appended to gpu.txt at the end.
# shellcheck disable=SC2086
python3 -m bench $SWEEP_ARGS --list >"$WORK/list.txt" 2>&1 &

# Phase 1.
if [ "$CONFORMANCE_LIMIT" -gt 0 ]; then
    : >"$OUT/conformance.log"
    PARALLEL=()
    if python3 -c 'import xdist' 2>/dev/null; then
        PARALLEL=(-n "$CONFORMANCE_WORKERS")
    fi
    step conformance "$CONFORMANCE_LIMIT" "$OUT/conformance.log" \
        python3 -m pytest conformance/ -q -rfE --tb=short --durations=10 -p no:cacheprovider \
        --continue-on-collection-errors ${PARALLEL[@]+"${PARALLEL[@]}"} &
fi
for ((i = 0; i < WARM_JOBS; i++)); do
    # shellcheck disable=SC2086  # SWEEP_ARGS is a list of flags
    step "compile sweep $i/$WARM_JOBS" "$WARM_LIMIT" "$WORK/warm-$i.log" \
        python3 -m bench $SWEEP_ARGS --compile-only --exclude-providers "$EXCLUDE_FLASHRNN" --shard "$i/$WARM_JOBS" &
done
for ((i = 0; i < FLASHRNN_JOBS; i++)); do
    # shellcheck disable=SC2086
    step "compile flashrnn $i/$FLASHRNN_JOBS" "$WARM_LIMIT" "$WORK/flashrnn-$i.log" \
        python3 -m bench $SWEEP_ARGS --compile-only --providers flashrnn --shard "$i/$FLASHRNN_JOBS" &
done
# shellcheck disable=SC2086
step "compile floor" "$WARM_LIMIT" "$WORK/floor-compile.log" python3 -m bench.floor $SWEEP_ARGS --compile-only &
if [ -n "$TILE_ARGS" ]; then
    # shellcheck disable=SC2086
    step "compile tiles" "$WARM_LIMIT" "$WORK/tiles-compile.log" \
        python3 -m bench.persistent_tiles $TILE_ARGS --compile-only &
fi
if [ "$AUTOTUNE_RUNS" -gt 0 ]; then
    : >"$OUT/autotune.log"
    (
        for ((run = 1; run <= AUTOTUNE_RUNS; run++)); do
            echo "=== autotuned run $run" >>"$OUT/autotune.log"
            TRITON_LSTM_AUTOTUNE=1 TRITON_PRINT_AUTOTUNING=1 step "autotuned run $run" "$WARM_LIMIT" \
                "$OUT/autotune.log" python3 -m bench --batch 16 --hidden-size 256 --seq-len 64 --dtype fp16 \
                --packed 0 --providers triton_step --out "$WORK/autotune-$run.csv"
        done
    ) &
fi
wait

# Phase 2.
# shellcheck disable=SC2086
step floor "$FLOOR_LIMIT" "$OUT/sweep.log" python3 -m bench.floor $SWEEP_ARGS --out "$OUT/floor.csv"
# shellcheck disable=SC2086
BENCH_REQUIRE_WARM=flashrnn step sweep "$SWEEP_LIMIT" "$OUT/sweep.log" \
    python3 -m bench $SWEEP_ARGS ${EXCLUDE:+--exclude-providers "$EXCLUDE"} --out "$OUT/sweep.csv" \
    --time-budget "$SWEEP_BUDGET"
if [ -n "$TILE_ARGS" ]; then
    # shellcheck disable=SC2086
    step tiles "$TILES_LIMIT" "$OUT/sweep.log" \
        python3 -m bench.persistent_tiles $TILE_ARGS --out "$OUT/tiles.csv" --time-budget "$TILES_BUDGET"
fi
step report "$REPORT_LIMIT" "$OUT/sweep.log" \
    python3 -m bench.report "$OUT/sweep.csv" --floor "$OUT/floor.csv" --out-dir "$OUT"
for log in "$WORK"/*.log; do
    { echo "=== last lines of $(basename "$log")"; tail -n 8 "$log"; } >>"$OUT/sweep.log"
done
{
    echo "=== python -m bench $SWEEP_ARGS --list"
    cat "$WORK/list.txt"
} >>"$OUT/gpu.txt"
{
    echo "=== providers and configurations built in phase 1 (markers)"
    find "$BENCH_WARM_DIR" -type f 2>/dev/null | sed "s|$BENCH_WARM_DIR/||" | sort
} >>"$OUT/sweep.log"
rm -rf "$WORK"
