"""``python -m bench.persistent_tiles``: time the persistent kernels over their tilings.

The launcher's plan (``triton_lstm.launch_persistent.plan``) picks one tiling per size and pass from the device's
SM count and shared memory, with choices checked by the ahead-of-time resource report (``python -m
triton_lstm.aot``) but, where this file's results are not cited, not timed. This measures the alternatives around
the plan on a GPU: units per program (and so programs), W_hh resident or streamed, the forward's reduction split over
warps, and warps. For every case (dtype, H, B) and every candidate it writes one CSV row per pass: the tiling, the
median time per call and per step, and the largest difference from the per-step kernel's result on the same input
(the output; the input gradient).

``--compile-only`` runs each candidate once on a short sequence (filling Triton's on-disk cache, no timing);
``--shard I/N`` takes every N-th candidate from the I-th, so that several processes compile in parallel. Without
a GPU the planned tilings run with one program per group through the interpreter: a check of the script, not a
timing.
"""

import argparse
import csv
import dataclasses
import itertools
import os
import statistics
import sys
import time

import torch

from bench.configs import DTYPE_SHORT
from bench.environment import bench_device, describe_machine, use_interpreter_without_cuda
from bench.sweep import _dtypes, _ints

# Imports triton (and so triton_lstm) only inside functions: the interpreter switch must come first.

COLUMNS = (
    "device", "triton_version", "git_commit", "dtype", "hidden_size", "batch", "seq_len", "pass", "block_b",
    "block_u", "block_k", "k_split", "resident", "num_warps", "programs", "planned", "status", "ms", "us_per_step",
    "max_diff_vs_step", "error",
)  # fmt: skip
# Candidate axes around the plan: units per program as planned and up to 4x (fewer programs), the forward's
# reduction split over 1, 2 or 4 warps' chunks, warps.
UNIT_FACTORS = (1, 2, 4)
K_SPLITS = (1, 2, 4)
WARPS = (4, 8)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.persistent_tiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="fp16,fp32", help="comma-separated dtypes")
    parser.add_argument("--hidden-size", default="256,1024", help="comma-separated H (input size I = H)")
    parser.add_argument("--batch", default="16", help="comma-separated B")
    parser.add_argument("--seq-len", type=int, default=256, help="T of the timed calls")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per candidate")
    parser.add_argument("--out", help="CSV to write (not with --compile-only)")
    parser.add_argument("--compile-only", action="store_true", help="run each candidate once at T = 16, no CSV")
    parser.add_argument("--shard", default="0/1", help="I/N: this process takes candidates I, I + N, ...")
    parser.add_argument("--time-budget", type=float, help="seconds after which no new candidate starts")
    args = parser.parse_args(argv)
    if not args.compile_only and not args.out:
        parser.error("--out is required unless --compile-only")
    return args


def candidates(hidden: int, batch: int, dtype: torch.dtype, device: torch.device, *, backward: bool):
    """The planned tiling of one pass, then the variants around it that fit the device (none under the
    interpreter, where the plan runs one program per group)."""
    import triton

    from triton_lstm import launch_persistent, tuning

    planned = launch_persistent.plan(hidden, hidden, batch, 1, dtype, device, backward=backward)
    if isinstance(planned, str):
        return
    yield planned
    if tuning.INTERPRETED:
        return
    facts = launch_persistent.device_facts(device)
    element = torch.finfo(dtype).bits // 8
    k_pad = max(16, triton.next_power_of_2(hidden))
    for factor, resident, k_split, warps in itertools.product(UNIT_FACTORS, (True, False), K_SPLITS, WARPS):
        units = planned.block_u * factor
        programs = triton.cdiv(hidden, units)
        estimate = launch_persistent.shared_bytes(hidden, hidden, element, planned.block_b, units, planned.block_n,
                                                  backward=backward)  # fmt: skip
        if units > hidden * 2 or (resident and estimate > facts.shared_bytes) or (backward and k_split > 1):
            continue
        if not resident and k_split > 1:
            continue
        streamed_k = launch_persistent.STREAM_K[element]
        block_k = planned.block_k if backward else (k_pad if resident else streamed_k)
        variant = dataclasses.replace(planned, block_u=units, programs=programs, resident=resident, k_split=k_split,
                                      block_k=block_k, num_warps=warps)  # fmt: skip
        if variant != planned and planned.batch_tiles * programs <= facts.programs:
            yield variant


class Case:
    """Random weights, input and upstream gradients of one (dtype, H, B), and the per-step kernels' output and
    input gradient as references."""

    def __init__(self, dtype: torch.dtype, hidden: int, batch: int, seq_len: int, device: torch.device):
        from triton_lstm import launch

        generator = torch.Generator().manual_seed(0)
        scale = hidden**-0.5
        major, minor = torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0)
        self.arch = 10 * major + minor

        def rand(*shape, factor=1.0):
            return (torch.rand(*shape, generator=generator) * 2 - 1).mul(factor).to(device=device, dtype=dtype)

        x, h0, c0 = rand(seq_len, batch, hidden), rand(1, batch, hidden), rand(1, batch, hidden)
        c0 = c0.to(launch.accumulator_dtype(dtype))
        w_ih, w_hh, bias = (rand(1, 4 * hidden, hidden, factor=scale), rand(1, 4 * hidden, hidden, factor=scale),
                            rand(1, 4 * hidden, factor=scale))  # fmt: skip
        self.forward_args = (x, h0, c0, w_ih, w_hh, bias, None)
        self.upstream = (rand(seq_len, batch, hidden), rand(1, batch, hidden), rand(1, batch, hidden).float())
        self.backward_args = (x, h0, c0, w_ih, w_hh, None)
        with torch.no_grad():
            self.reference, _, _, saved = launch.step_forward(*self.forward_args, save=True)
            self.saved = saved
            self.reference_d_x = launch.step_backward(*self.upstream, *self.backward_args, saved)[0]


def run(plan, case: Case, *, backward: bool) -> torch.Tensor:
    """The output of the persistent forward, or the input gradient of the persistent backward (from the per-step
    forward's saved state), with this tiling."""
    from triton_lstm import launch_persistent, tuning

    with tuning.serialized():
        if backward:
            return launch_persistent.persistent_backward(*case.upstream, *case.backward_args, case.saved, plan=plan)[0]
        return launch_persistent.persistent_forward(*case.forward_args, save=False, plan=plan)[0]


def time_calls(fn, device: torch.device, reps: int) -> float:
    """Median milliseconds of ``reps`` calls after one untimed call."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def _max_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return (ours.double() - reference.double()).abs().max().item()


def _measure(plan, backward: bool, case: Case, seq_len: int, device: torch.device, args) -> dict:
    """Status and timing columns of one candidate."""
    try:
        if args.compile_only:
            run(plan, case, backward=backward)
            return {"status": "compiled"}
        ms = time_calls(lambda: run(plan, case, backward=backward), device, args.reps)
        reference = case.reference_d_x if backward else case.reference
        return {"status": "ok", "ms": ms, "us_per_step": ms * 1e3 / seq_len,
                "max_diff_vs_step": _max_diff(run(plan, case, backward=backward), reference)}  # fmt: skip
    except Exception as error:  # a tiling that does not compile or launch is a result too
        return {"status": "error", "error": " ".join(f"{type(error).__name__}: {error}".split())[:300]}


def main(argv=None) -> int:
    args = parse_args(argv)
    use_interpreter_without_cuda()
    device = bench_device()
    shard, shards = (int(part) for part in args.shard.split("/"))
    seq_len = 16 if args.compile_only else args.seq_len
    deadline = time.monotonic() + args.time_budget if args.time_budget is not None else float("inf")
    machine = describe_machine(device)
    jobs = [
        (dtype, hidden, batch, backward, index, plan)
        for dtype in _dtypes(args.dtype)
        for hidden in _ints(args.hidden_size)
        for batch in _ints(args.batch)
        for backward in (False, True)
        for index, plan in enumerate(candidates(hidden, batch, getattr(torch, dtype), device, backward=backward))
    ][shard::shards]
    cases = {}
    with open(os.devnull if args.compile_only else args.out, "w", newline="") as out:
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        for dtype, hidden, batch, backward, index, plan in jobs:
            row = {
                "device": machine.device, "triton_version": machine.triton_version, "git_commit": machine.git_commit,
                "dtype": DTYPE_SHORT[dtype], "hidden_size": hidden, "batch": batch, "seq_len": seq_len,
                "pass": "backward" if backward else "forward", "block_b": plan.block_b, "block_u": plan.block_u,
                "block_k": plan.block_k, "k_split": plan.k_split, "resident": plan.resident,
                "num_warps": plan.num_warps, "programs": plan.programs, "planned": index == 0,
            }  # fmt: skip
            if time.monotonic() > deadline:
                row["status"] = "skipped"
            else:
                key = (dtype, hidden, batch)
                try:
                    case = cases.get(key) or cases.setdefault(key, Case(getattr(torch, dtype), hidden, batch,
                                                                        seq_len, device))  # fmt: skip
                except Exception as error:  # inputs that cannot be made are a result too
                    row.update(status="error", error=f"{type(error).__name__}: {error}"[:300])
                else:
                    row.update(_measure(plan, backward, case, seq_len, device, args))
            print(", ".join(f"{name}={row.get(name, '')}" for name in COLUMNS[3:]), file=sys.stderr, flush=True)
            writer.writerow(row)
            out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
