"""The sweep's CSV: a fixed schema, one row per (configuration, provider, mode), machine facts in every row."""

import csv
from pathlib import Path

SCHEMA_VERSION = 1

# Column -> meaning. The order is the file's; bench/README.md documents the same columns.
COLUMNS = {
    "schema_version": "version of this schema (1)",
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
    "dtype": "float16, bfloat16 or float32",
    "packed": "True: PackedSequence input with unequal lengths; False: padded",
    "provider": "torch, naive, or triton_<kernel>",
    "mode": "forward (inference, no_grad) or forward_backward (gradients of input and weights)",
    "status": "ok, error (see error) or skipped (time budget spent)",
    "error": "the exception, as 'Type: message', when status is error",
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
    """Every row of a sweep's CSV, as strings; raises ValueError for a file of another schema."""
    with Path(path).open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    if "schema_version" not in (reader.fieldnames or ()):
        raise ValueError(f"{path}: not a sweep CSV (no schema_version column)")
    versions = {row["schema_version"] for row in rows}
    if versions - {str(SCHEMA_VERSION)}:
        raise ValueError(f"{path}: schema version(s) {sorted(versions)}, this code reads {SCHEMA_VERSION}")
    return rows


def number(row: dict[str, str], column: str) -> float | None:
    """A numeric cell as a float, None when empty."""
    value = row.get(column, "")
    return float(value) if value not in ("", None) else None
