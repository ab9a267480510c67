"""Timing of one benchmark call, its peak memory, and the machine's matmul peak and memory bandwidth.

On a GPU every repetition is timed with a pair of CUDA events; on the CPU with ``time.perf_counter``. The first
two calls (compilation, autotuning, peak memory) are warm-up and never part of the timed repetitions.
"""

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.environment import float32_matmul_precision


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call over the timed repetitions, and what the warm-up and one call cost."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    first_call_s: float  # wall time of the first call: compilation and autotuning included
    peak_mem_mb: float | None  # memory one call allocates above what was allocated before it (GPU only)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object],
    device: torch.device,
    *,
    target_s: float = 0.15,
    min_reps: int = 3,
    max_reps: int = 50,
) -> tuple[Timing, object]:
    """Time ``fn`` on ``device``; returns the timing and what the first call returned.

    Two untimed calls come first: the first one compiles and autotunes (its wall time is ``first_call_s``), the
    second one measures peak memory and how long a call takes. Then as many timed repetitions as fit in about
    ``target_s`` seconds, at least ``min_reps`` and at most ``max_reps``.
    """
    start = time.perf_counter()
    first = fn()
    synchronize(device)
    first_call_s = time.perf_counter() - start
    start = time.perf_counter()
    peak_mem_mb = _peak_memory_mb(fn, device)
    estimate = time.perf_counter() - start
    reps = int(min(max_reps, max(min_reps, target_s // max(estimate, 1e-6))))
    times = _time_reps(fn, device, reps)
    p20, median, p80 = _quantiles(times, (0.2, 0.5, 0.8))
    return Timing(median, p20, p80, reps, first_call_s, peak_mem_mb), first


def _time_reps(fn: Callable[[], object], device: torch.device, reps: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls."""
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for begin, end in events:
        begin.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [begin.elapsed_time(end) for begin, end in events]


def _quantiles(values: list[float], qs: tuple[float, ...]) -> list[float]:
    return torch.tensor(values, dtype=torch.float64).quantile(torch.tensor(qs, dtype=torch.float64)).tolist()


def _peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Call ``fn`` once; returns its peak memory above what was allocated before it, in MiB (None off the GPU)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


@dataclass(frozen=True)
class HardwarePeaks:
    """Measured once per run: matmul throughput per dtype (FLOP/s) and device memory bandwidth (bytes/s)."""

    matmul_flops: dict[str, float]
    bandwidth: float


def measure_peaks(device: torch.device, dtypes: list[str]) -> HardwarePeaks:
    """Time a large square matmul in each dtype and a large device-to-device copy.

    float32 matmuls run with TF32 allowed: cuDNN's LSTM and Triton's ``tl.dot`` both use TF32 for float32 by
    default, so that is the peak their float32 rows can approach. Sizes are small on the CPU, where the numbers
    only exercise the pipeline.
    """
    on_gpu = device.type == "cuda"
    size = 8192 if on_gpu else 256
    target_s = 0.2 if on_gpu else 0.02
    matmul = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        with float32_matmul_precision(True) if name == "float32" else contextlib.nullcontext():
            timing, _ = measure(lambda a=a, b=b: a @ b, device, target_s=target_s, max_reps=20)
        matmul[name] = 2 * size**3 / (timing.median_ms * 1e-3)
        del a, b
    elements = (2**30 if on_gpu else 2**24) // 4
    src = torch.randn(elements, device=device)
    dst = torch.empty_like(src)
    timing, _ = measure(lambda: dst.copy_(src), device, target_s=target_s, max_reps=20)
    bandwidth = 2 * src.nbytes / (timing.median_ms * 1e-3)  # every byte is read once and written once
    return HardwarePeaks(matmul, bandwidth)
