"""The sweep's CSV: a fixed schema, one row per (configuration, provider, mode), machine facts in every row."""

import csv
from pathlib import Path

SCHEMA_VERSION = 2
# Versions this code reads: 1 lacked fp32_precision, variant and reason (read as empty).
READABLE_VERSIONS = (1, 2)

# Column -> meaning. The order is the file's; bench/README.md documents the same columns.
COLUMNS = {
    "schema_version": "version of this schema (2; files of version 1 are read with the new columns empty)",
    "timestamp": "UTC time the sweep started (ISO 8601)",
    "device": "GPU name, or the CPU",
    "device_type": "cuda or cpu",
    "torch_version": "torch.__version__",
    "triton_version": "triton.__version__",
    "python_version": "Python version",
    "cuda_version": "CUDA version torch was built with (empty on a CPU build)",
    "git_commit": "$BENCH_GIT_COMMIT when set, else HEAD of the checkout (-dirty if tracked files changed) or unknown",
    "env": "TRITON_* environment variables in effect, e.g. TRITON_LSTM_AUTOTUNE=0 (kernels not autotuned)",
    "note": "set on CPU rows: a pipeline check through the interpreter, not a performance figure",
    "config": "readable configuration id, e.g. B16-T512-H768-I768-L1-uni-fp16 (the join key of --compare)",
    "batch": "B",
    "seq_len": "T",
    "hidden_size": "H",
    "input_size": "I",
    "num_layers": "stacked layers",
    "bidirectional": "True or False",
    "proj_size": "P (0: no projection)",
    "dtype": "float16, bfloat16, float32 or float64",
    "fp32_precision": "float32 rows: tf32 (TF32 allowed) or ieee, as torch's flags were set around every call",
    "packed": "True: PackedSequence input with unequal lengths; False: padded",
    "provider": "torch, triton_<kernel>, compiled_cell, flashrnn or naive (bench/providers.py)",
    "variant": "what the provider ran: cudnn, the kernel auto chose, the torch.compile or FlashRNN backend",
    "mode": "forward (inference, no_grad) or forward_backward (gradients of input and weights)",
    "status": "ok, error (see error) or skipped (see reason)",
    "error": "the exception, as 'Type: message', when status is error",
    "reason": "why the row was skipped: provider not installed, configuration unsupported, time budget spent",
    "reps": "timed repetitions",
    "median_ms": "median time of one call",
    "p20_ms": "20th percentile",
    "p80_ms": "80th percentile",
    "first_call_s": "wall time of the first (warm-up) call: compilation and autotuning included",
    "peak_mem_mb": "peak memory one call allocates above what was allocated before, MiB (GPU only)",
    "tokens": "real time steps in the batch: T*B padded, sum of lengths packed",
    "tokens_per_s": "tokens / median time",
    "gflop": "FLOP model of one call, in 1e9 FLOP",
    "gbyte": "byte model of one call, in 1e9 bytes",
    "tflops": "achieved TFLOP/s: gflop / median time",
    "peak_tflops": "measured matmul peak in this dtype (TF32 for float32)",
    "bandwidth_gbs": "measured device-copy bandwidth, GB/s",
    "floor_ms": "hardware floor: max(FLOPs / matmul peak, bytes / bandwidth)",
    "floor_fraction": "floor_ms / median_ms (1.0 = at the floor)",
    "speedup_vs_torch": "torch's median_ms / this median_ms, same configuration and mode",
    "max_abs_err": "max |output - torch.nn.LSTM output| of the forward, same dtype and weights",
}


class ResultWriter:
    """Appends rows to a new CSV file, flushing each one, so an interrupted sweep keeps what it measured."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=list(COLUMNS))
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: dict) -> None:
        """Write one row; columns missing from ``row`` stay empty, floats keep 6 significant digits."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"columns not in the schema: {sorted(unknown)}")
        self._writer.writerow({key: _format(value) for key, value in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _format(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_results(path: Path) -> list[dict[str, str]]:
    """Every row of a sweep's CSV, as strings with every column of this schema (those an older version lacked are
    empty); raises ValueError for a file of another schema."""
    with Path(path).open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    if "schema_version" not in (reader.fieldnames or ()):
        raise ValueError(f"{path}: not a sweep CSV (no schema_version column)")
    versions = {row["schema_version"] for row in rows}
    if versions - {str(version) for version in READABLE_VERSIONS}:
        raise ValueError(f"{path}: schema version(s) {sorted(versions)}, this code reads {READABLE_VERSIONS}")
    return [{column: row.get(column) or "" for column in COLUMNS} for row in rows]


def merge_results(paths) -> list[dict[str, str]]:
    """The rows of several sweeps' CSVs in order; where two files hold the same (config, provider, mode), the row
    of the later file replaces the earlier one in place (e.g. a rerun of one provider after the full sweep)."""
    merged: dict[tuple[str, str, str], dict[str, str]] = {}
    for path in paths:
        for row in read_results(path):
            merged[(row["config"], row["provider"], row["mode"])] = row
    return list(merged.values())


def number(row: dict[str, str], column: str) -> float | None:
    """A numeric cell as a float, None when empty."""
    value = row.get(column, "")
    return float(value) if value not in ("", None) else None


# The step-latency floor's CSV (``python -m bench.floor``): one row per distinct grid, joined to sweep rows by key.
FLOOR_COLUMNS = (
    "device", "torch_version", "triton_version", "git_commit", "timestamp", "note", "key", "dtype", "hidden_size",
    "h_out", "batch", "directions", "batch_tiles", "programs", "block_b", "block_u", "block_k", "steps_short",
    "steps_long", "barrier_us", "barrier_h_us", "check", "status", "reason",
)  # fmt: skip


def floor_key(dtype: str, hidden: int, h_out: int, batch: int, directions: int) -> str:
    """What the floor of a configuration depends on (its grid and the width of h): the join key with sweep rows."""
    return f"{dtype}-H{hidden}-O{h_out}-B{batch}-D{directions}"


def row_floor_key(row: dict[str, str]) -> str:
    """``floor_key`` of a sweep CSV row."""
    hidden = int(row["hidden_size"])
    h_out = int(row["proj_size"] or 0) or hidden
    directions = 2 if row["bidirectional"] == "True" else 1
    return floor_key(row["dtype"], hidden, h_out, int(row["batch"]), directions)


def read_floor(path: Path) -> dict[str, dict[str, str]]:
    """A floor CSV's rows by ``key``."""
    with Path(path).open(newline="") as file:
        return {row["key"]: row for row in csv.DictReader(file)}


def latency_floor_ms(row: dict[str, str], floors: dict[str, dict[str, str]]) -> float | None:
    """The step-latency floor of a sweep row in ms, or None without a measured floor for its grid: layers x T x the
    barrier + h broadcast time of one step (``barrier_h_us``), twice that for forward and backward (the backward
    recurrence needs at least one more barrier and broadcast a step). See ``bench.floor``."""
    floor = floors.get(row_floor_key(row))
    if floor is None or floor.get("status") != "ok" or not floor.get("barrier_h_us"):
        return None
    per_step_us = float(floor["barrier_h_us"]) * (2 if row["mode"] == "forward_backward" else 1)
    return int(row["num_layers"]) * int(row["seq_len"]) * per_step_us * 1e-3
