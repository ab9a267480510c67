"""Per-step and per-call cost of the LSTM implementations at short and long sequences (issue 14).

    python -m bench.host_overhead --out DIR            # the issue's grid on a GPU (about 5 minutes on an H200)
    TRITON_INTERPRET=1 python -m bench.host_overhead --out DIR --preset cpu   # pipeline check, tiny sizes

For every (dtype, batch, hidden, T, implementation, mode) one CSV row (``DIR/host_overhead.csv``, written row by
row, so a run cut short keeps what it measured), then ``DIR/host_overhead.md``: per implementation the time per
step (slope of a least-squares line through the call times at each T) and the fixed cost of a call (its intercept),
forward and forward+backward, and the issue's two targets. One layer, one direction, input size = hidden size.

Implementations: ``cudnn`` (torch.nn.LSTM: cuDNN on a GPU; float32 in TF32, torch's default), ``step_triton`` (the
per-step kernel with every launch through Triton's own path, as before the lean launch), ``step_lean`` (the lean
launch, the default), ``step_graphed`` (the per-step loop replayed as a CUDA graph: GPU only), ``persistent``.

Columns: the configuration; ``wall_ms`` (median, p20, p80) the time of a call from the host's start to the GPU's
end (synchronised before and after each); ``device_ms`` the median between CUDA events around the call (what the
GPU spans); ``host_ms`` the median time the host spends in the call before returning (no synchronisation inside:
when it approaches ``wall_ms``, the call is bound by launching, not by the GPU); ``status`` ``ok``, ``skipped: why``
or ``error: what``. Forward is inference (``no_grad``); forward_backward the gradients of the input and every
weight (``torch.autograd.grad``). Autotuning follows ``TRITON_LSTM_AUTOTUNE`` (the GPU script sets it to 0).
"""

import argparse
import contextlib
import csv
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton

import triton_lstm
from triton_lstm import fast_launch, graphs

IMPLEMENTATIONS = ("cudnn", "step_triton", "step_lean", "step_graphed", "persistent")
MODES = ("forward", "forward_backward")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
PRESETS = {
    # (batches, hiddens, sequence lengths, dtypes); the targets (B = 16, H = 256) come first.
    "gpu": ((16, 64, 256), (256, 1024), (1, 8, 32, 512), ("fp16", "fp32")),
    "cpu": ((2,), (8,), (1, 3), ("fp32",)),
}
COLUMNS = ("impl", "mode", "dtype", "batch", "hidden", "seq_len", "reps", "wall_ms", "wall_p20_ms", "wall_p80_ms",
           "device_ms", "host_ms", "status", "device", "torch", "triton", "git_commit", "timestamp", "env")  # fmt: skip
# Per-step target of the issue (us, step kernel, B = 16, H = 256, H200) and the call-time ratio to cuDNN at T = 32.
STEP_TARGET_US, CALL_TARGET_RATIO = 10.0, 1.5


def _git_commit() -> str:
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent)  # fmt: skip
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'cpu'})"
    env = ",".join(f"{k}={os.environ[k]}" for k in sorted(os.environ) if k.startswith(("TRITON_LSTM", "TRITON_INT")))
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__, "git_commit": _git_commit(),
            "timestamp": now, "env": env}  # fmt: skip


@contextlib.contextmanager
def _implementation(impl: str):
    """The switches an implementation runs under (the lean launch and graphs are process-wide)."""
    lean, enabled = fast_launch.LEAN, graphs.ENABLED
    fast_launch.LEAN = impl != "step_triton"
    graphs.set_enabled(impl == "step_graphed")
    try:
        yield
    finally:
        fast_launch.LEAN = lean
        graphs.set_enabled(enabled)
        graphs.clear()


def _module(impl, hidden, dtype, device):
    torch.manual_seed(0)
    reference = torch.nn.LSTM(hidden, hidden, device=device, dtype=dtype)
    if impl == "cudnn":
        return reference
    kernel = "persistent" if impl == "persistent" else "step"
    return triton_lstm.LSTM.from_torch(reference, kernel=kernel)


def _call(module, x, upstream, mode):
    """One call of the benchmarked function."""
    if mode == "forward":
        with torch.no_grad():
            return module(x)
    leaf = x.detach().requires_grad_()
    output, _ = module(leaf)
    return torch.autograd.grad(output, [leaf, *module.parameters()], upstream)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantiles(values, qs=(0.2, 0.5, 0.8)):
    return torch.tensor(values, dtype=torch.float64).quantile(torch.tensor(qs, dtype=torch.float64)).tolist()


def measure(fn, device, *, warmup: int, target_s: float, max_reps: int):
    """(reps, wall ms p20/median/p80, device ms median, host ms median) of ``fn`` after ``warmup`` calls."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    estimate = (time.perf_counter() - start) / max(warmup, 1)
    reps = int(min(max_reps, max(3, target_s // max(estimate, 1e-6))))
    walls, hosts, devices = [], [], []
    for _ in range(reps):
        _sync(device)
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        start = time.perf_counter()
        fn()
        hosts.append((time.perf_counter() - start) * 1e3)
        if device.type == "cuda":
            end.record()
        _sync(device)
        walls.append((time.perf_counter() - start) * 1e3)
        if device.type == "cuda":
            devices.append(begin.elapsed_time(end))
    p20, median, p80 = _quantiles(walls)
    device_ms = _quantiles(devices)[1] if devices else float("nan")
    return reps, (p20, median, p80), device_ms, _quantiles(hosts)[1]


def _skip_reason(impl, hidden, batch, dtype, device):
    if impl == "step_graphed" and device.type != "cuda":
        return "CUDA graphs need a GPU"
    if impl == "persistent":
        from triton_lstm import launch_persistent

        for backward in (False, True):
            planned = launch_persistent.plan(hidden, hidden, batch, 1, dtype, device, backward=backward)
            if isinstance(planned, str):
                return planned
    return None


def run(args) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = _machine(device)
    batches, hiddens, seq_lens, dtypes = PRESETS[args.preset]
    batches = args.batch or batches
    hiddens = args.hidden or hiddens
    seq_lens = args.seq_len or seq_lens
    dtypes = args.dtype or dtypes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    with open(out / "host_overhead.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            for hidden in hiddens:
                for batch in batches:
                    for impl in args.impl:
                        skip = _skip_reason(impl, hidden, batch, dtype, device)
                        module = None if skip else _module(impl, hidden, dtype, device)
                        for seq_len in seq_lens:
                            generator = torch.Generator().manual_seed(seq_len)
                            x = torch.randn(seq_len, batch, hidden, generator=generator).to(device, dtype)
                            upstream = torch.randn(seq_len, batch, hidden, generator=generator).to(device, dtype)
                            for mode in args.modes:
                                row = {"impl": impl, "mode": mode, "dtype": dtype_name, "batch": batch,
                                       "hidden": hidden, "seq_len": seq_len, **machine}  # fmt: skip
                                if skip:
                                    row["status"] = f"skipped: {skip}"
                                elif time.perf_counter() - started > args.budget_s:
                                    row["status"] = "skipped: time budget"
                                else:
                                    row.update(_measured(impl, module, x, upstream, mode, device, args))
                                writer.writerow(row)
                                handle.flush()
                                rows.append(row)
                                print(_progress(row), flush=True)
                        del module
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
    (out / "host_overhead.md").write_text(summary(rows))
    return rows


def _measured(impl, module, x, upstream, mode, device, args) -> dict:
    try:
        with _implementation(impl):
            # Three warm-up calls: compile and tune; for graphs, the eager call, the capture, the first replay.
            reps, walls, device_ms, host_ms = measure(lambda: _call(module, x, upstream, mode), device, warmup=3,
                                                      target_s=args.target_s, max_reps=args.max_reps)  # fmt: skip
    except Exception as error:  # a failing configuration is a row, not the end of the run
        return {"status": f"error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]}
    return {"reps": reps, "wall_ms": f"{walls[1]:.4f}", "wall_p20_ms": f"{walls[0]:.4f}",
            "wall_p80_ms": f"{walls[2]:.4f}", "device_ms": f"{device_ms:.4f}", "host_ms": f"{host_ms:.4f}",
            "status": "ok"}  # fmt: skip


def _progress(row) -> str:
    where = f"{row['impl']:<13} {row['mode']:<16} {row['dtype']} B{row['batch']} H{row['hidden']} T{row['seq_len']}"
    if row["status"] != "ok":
        return f"{where}: {row['status']}"
    return f"{where}: wall {row['wall_ms']} ms, device {row['device_ms']} ms, host {row['host_ms']} ms"


def _fit(points):
    """(per-step us, fixed us) of a least-squares line through (T, wall ms) points; None with fewer than two."""
    if len({t for t, _ in points}) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = sum((t - mean_t) * (y - mean_y) for t, y in points) / sum((t - mean_t) ** 2 for t, _ in points)
    return slope * 1e3, (mean_y - slope * mean_t) * 1e3


def _config(row) -> tuple:
    return row["dtype"], int(row["batch"]), int(row["hidden"]), row["mode"]


def summary(rows) -> str:
    """Markdown: per configuration and mode, each implementation's us per step and fixed us per call; the targets."""
    ok = [r for r in rows if r.get("status") == "ok"]
    lines = ["# Per-step and per-call cost (bench/host_overhead.py)", ""]
    if ok:
        first = ok[0]
        lines += [f"{first['device']}, torch {first['torch']}, triton {first['triton']}, commit {first['git_commit']}, "
                  f"{first['timestamp']}, env `{first['env']}`.", ""]  # fmt: skip
    if any(r["device"].startswith("cpu") for r in rows):
        lines += ["CPU through the Triton interpreter: a pipeline check, not a performance figure.", ""]
    impls = [i for i in IMPLEMENTATIONS if any(r["impl"] == i for r in ok)]
    lines += ["us per step (slope over T) / fixed us per call (intercept), median wall time of a call:", "",
              "| dtype | B | H | mode | " + " | ".join(impls) + " |", "|---" * (4 + len(impls)) + "|"]  # fmt: skip
    configs = sorted({_config(r) for r in ok})
    fits = {}
    for config in configs:
        cells = []
        for impl in impls:
            points = [(int(r["seq_len"]), float(r["wall_ms"])) for r in ok
                      if _config(r) == config and r["impl"] == impl]  # fmt: skip
            fit = fits[(*config, impl)] = _fit(points)
            cells.append(f"{fit[0]:.1f} / {fit[1]:.0f}" if fit else "-")
        lines.append(f"| {config[0]} | {config[1]} | {config[2]} | {config[3]} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (issue 14): per-step kernel <= 10 us a step at B = 16, H = 256; a call at T = 32, B = 16, "
              "H = 256 within 1.5x of cuDNN's.", ""]  # fmt: skip
    for dtype in sorted({r["dtype"] for r in ok}):
        for mode in MODES:
            for impl in ("step_lean", "step_graphed"):
                fit = fits.get((dtype, 16, 256, mode, impl))
                if fit:
                    verdict = "met" if fit[0] <= STEP_TARGET_US else "not met"
                    lines.append(f"- {impl} {dtype} {mode}: {fit[0]:.1f} us a step ({verdict})")
            call = {r["impl"]: float(r["wall_ms"]) for r in ok if (r["dtype"], int(r["batch"]), int(r["hidden"]),
                    int(r["seq_len"]), r["mode"]) == (dtype, 16, 256, 32, mode)}  # fmt: skip
            if "cudnn" in call:
                for impl in ("step_lean", "step_graphed", "persistent"):
                    if impl in call:
                        ratio = call[impl] / call["cudnn"]
                        verdict = "met" if ratio <= CALL_TARGET_RATIO else "not met"
                        lines.append(f"- {impl} {dtype} {mode} T=32: {call[impl]:.3f} ms vs cuDNN {call['cudnn']:.3f} "
                                     f"ms = {ratio:.2f}x ({verdict})")  # fmt: skip
    skipped = [r for r in rows if r.get("status") != "ok"]
    if skipped:
        lines += ["", f"{len(skipped)} row(s) not measured:", ""]
        reasons = {}
        for r in skipped:
            reasons.setdefault(r["status"], []).append(f"{r['impl']} {r['dtype']} B{r['batch']} H{r['hidden']}")
        for reason, where in reasons.items():
            lines.append(f"- {reason}: {len(where)} (e.g. {', '.join(sorted(set(where))[:4])})")
    return "\n".join(lines) + "\n"


def _ints(text):
    return [int(v) for v in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (host_overhead.csv, host_overhead.md)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=_ints, help="comma-separated batch sizes (replace the preset's)")
    parser.add_argument("--hidden", type=_ints, help="comma-separated hidden sizes")
    parser.add_argument("--seq-len", type=_ints, help="comma-separated sequence lengths")
    parser.add_argument("--dtype", type=lambda s: s.split(","), help="comma-separated: fp16,bf16,fp32,fp64")
    parser.add_argument("--impl", type=lambda s: s.split(","), default=list(IMPLEMENTATIONS))
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no measurement after this")
    parser.add_argument("--target-s", type=float, default=0.1, help="timed repetitions fill about this long")
    parser.add_argument("--max-reps", type=int, default=30)
    args = parser.parse_args(argv)
    unknown = set(args.impl) - set(IMPLEMENTATIONS) | set(args.modes) - set(MODES) | set(args.dtype or []) - set(DTYPES)
    if unknown:
        parser.error(f"unknown values: {sorted(unknown)}")
    rows = run(args)
    print(summary(rows))
    return 0 if all(not r["status"].startswith("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
