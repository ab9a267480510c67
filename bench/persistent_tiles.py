"""``python -m bench.persistent_tiles``: time the persistent kernels over tile shapes and warps.

The launcher's plan (``triton_lstm.launch_persistent.plan``) picks one tiling per size from ahead-of-time resource
reports; this measures the alternatives on a GPU, so that the plan's choices rest on timings. For every case
(dtype, H, B) and every candidate tiling it writes one CSV row: the tiles, whether W_hh is held on chip
(hoist_w), the grid, and for the forward and the backward kernel (the backward streams W_hh in its own chunks,
``launch_persistent.backward_chunk``) the median time per call and per step and the largest difference from the
per-step kernel's result on the same input (the output; the input gradient).

``--compile-only`` runs each candidate once on a short sequence (filling Triton's on-disk cache, no timing);
``--shard I/N`` takes every N-th candidate from the I-th, so that several processes compile in parallel. Without
a GPU, candidates run with one program per group through the interpreter: a check of the script, not a timing.
"""

import argparse
import csv
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
    "device", "triton_version", "git_commit", "dtype", "hidden_size", "batch", "seq_len", "block_b", "block_u",
    "block_k", "hoist_w", "num_warps", "programs", "planned", "status", "forward_ms", "forward_us_per_step",
    "forward_max_diff_vs_step", "backward_ms", "backward_us_per_step", "backward_max_diff_vs_step", "error",
)  # fmt: skip
# Candidate axes. Held on chip (hoist_w) only while H fits one reduction chunk, as in the plan.
UNIT_BLOCKS = (16, 32, 64)
STREAM_CHUNKS = (64, 128, 256)
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


def candidates(hidden: int, batch: int, capacity: int | None):
    """Tilings to try, as the ``config`` dicts of ``persistent_forward``; ``capacity`` None is the interpreter."""
    import triton

    from triton_lstm.launch_persistent import HOIST_MAX_K

    layouts = [(block_u, hidden, True) for block_u in UNIT_BLOCKS] if hidden <= HOIST_MAX_K else []
    layouts += [(block_u, block_k, False) for block_u, block_k in itertools.product(UNIT_BLOCKS, STREAM_CHUNKS)]
    for (block_u, block_k, hoist), warps in itertools.product(layouts, WARPS):
        block_b = 16 if hoist else min(32, max(16, triton.next_power_of_2(batch)))
        programs = triton.cdiv(hidden, block_u)
        if capacity is not None and triton.cdiv(batch, block_b) * programs > capacity:
            continue
        # The interpreter runs programs one after another: one program per group loops over every unit tile.
        per_program = 1 if capacity is not None else programs
        yield {
            "BLOCK_B": block_b, "BLOCK_U": block_u, "UNIT_TILES": per_program, "BLOCK_N": block_u,
            "COL_TILES": per_program, "PROGRAMS": programs if capacity is not None else 1,
            "BLOCK_K": triton.next_power_of_2(block_k), "HOIST_W": hoist and per_program == 1, "num_warps": warps,
        }  # fmt: skip


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


def run_forward(config: dict, case: Case) -> torch.Tensor:
    """The output of the persistent forward with this tiling."""
    from triton_lstm import launch_persistent, tuning

    with tuning.serialized():
        return launch_persistent.persistent_forward(*case.forward_args, save=False, config=config)[0]


def run_backward(config: dict, case: Case) -> torch.Tensor:
    """The input gradient of the persistent backward with this tiling (from the per-step forward's saved state)."""
    from triton_lstm import launch_persistent, tuning

    # The backward reduces in its own chunks, whatever the forward's (launch_persistent.backward_chunk).
    config = {**config, "BLOCK_K": launch_persistent.backward_chunk(case.arch)}
    with tuning.serialized():
        return launch_persistent.persistent_backward(*case.upstream, *case.backward_args, case.saved, config=config)[0]


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


def _measure(config: dict, cases: dict, key: tuple, seq_len: int, device: torch.device, args) -> dict:
    """Status and timing columns of one candidate; ``cases`` keeps each (dtype, H, B)'s input and reference."""
    dtype, hidden, batch = key
    try:
        case = cases.get(key) or cases.setdefault(key, Case(getattr(torch, dtype), hidden, batch, seq_len, device))
        if args.compile_only:
            run_forward(config, case)
            run_backward(config, case)
            return {"status": "compiled"}
        forward_ms = time_calls(lambda: run_forward(config, case), device, args.reps)
        backward_ms = time_calls(lambda: run_backward(config, case), device, args.reps)
        return {
            "status": "ok",
            "forward_ms": forward_ms,
            "forward_us_per_step": forward_ms * 1e3 / seq_len,
            "forward_max_diff_vs_step": _max_diff(run_forward(config, case), case.reference),
            "backward_ms": backward_ms,
            "backward_us_per_step": backward_ms * 1e3 / seq_len,
            "backward_max_diff_vs_step": _max_diff(run_backward(config, case), case.reference_d_x),
        }
    except Exception as error:  # a tiling that does not compile or launch is a result too
        return {"status": "error", "error": " ".join(f"{type(error).__name__}: {error}".split())[:300]}


def main(argv=None) -> int:
    args = parse_args(argv)
    use_interpreter_without_cuda()
    from triton_lstm.launch_persistent import plan
    from triton_lstm.tuning import persistent_forward_configs

    planned_warps = persistent_forward_configs()[0].num_warps

    device = bench_device()
    capacity = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None
    shard, shards = (int(part) for part in args.shard.split("/"))
    seq_len = 16 if args.compile_only else args.seq_len
    deadline = time.monotonic() + args.time_budget if args.time_budget is not None else float("inf")
    machine = describe_machine(device)
    jobs = [
        (dtype, hidden, batch, config)
        for dtype in _dtypes(args.dtype)
        for hidden in _ints(args.hidden_size)
        for batch in _ints(args.batch)
        for config in candidates(hidden, batch, capacity)
    ][shard::shards]
    cases = {}
    with open(os.devnull if args.compile_only else args.out, "w", newline="") as out:
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        for dtype, hidden, batch, config in jobs:
            torch_dtype = getattr(torch, dtype)
            planned = plan(hidden, hidden, batch, 1, torch_dtype, device)
            row = {
                "device": machine.device, "triton_version": machine.triton_version, "git_commit": machine.git_commit,
                "dtype": DTYPE_SHORT[dtype], "hidden_size": hidden, "batch": batch, "seq_len": seq_len,
                "block_b": config["BLOCK_B"], "block_u": config["BLOCK_U"], "block_k": config["BLOCK_K"],
                "hoist_w": config["HOIST_W"], "num_warps": config["num_warps"], "programs": config["PROGRAMS"],
                "planned": not isinstance(planned, str)
                and (planned.block_u, planned.block_k, planned.hoist_w, planned_warps)
                == (config["BLOCK_U"], config["BLOCK_K"], config["HOIST_W"], config["num_warps"]),
            }  # fmt: skip
            if time.monotonic() > deadline:
                row["status"] = "skipped"
            else:
                key = (dtype, hidden, batch)
                row.update(_measure(config, cases, key, seq_len, device, args))
            print(", ".join(f"{name}={row.get(name, '')}" for name in COLUMNS[3:]), file=sys.stderr, flush=True)
            writer.writerow(row)
            out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
