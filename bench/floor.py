"""``python -m bench.floor``: the step-latency floor of a persistent LSTM on this GPU.

A recurrence at small batch is bound by its chain of dependent steps, not by FLOPs or bytes: each step, every
program must wait for all of h_{t-1} (a grid barrier), read it (an L2 round trip), multiply and apply the cell.
This measures the first two on the grid our persistent kernel uses (``triton_lstm.launch_persistent.plan``:
``(batch_tiles, programs, directions)``, one barrier counter per (batch tile, direction) group), with a kernel that
does nothing else:

- ``barrier``: per step, only the grid barrier (``triton_lstm.kernels.sync.group_barrier``);
- ``barrier_h``: per step, read this program's whole h_{t-1} slice (B_tile x H_out elements of the dtype, with
  ``cache_modifier=".cg"`` as the LSTM kernel reads it), write its own units of h_t (the row mean plus one, so the
  store depends on every load), then the barrier.

Microseconds per step come from two launches of different lengths (their difference, so launch cost cancels),
each the median of several CUDA-event-timed launches. A shorter run from h = 0 checks the barrier: after n steps
every element of h must be exactly n (a program that read h before the others wrote it would lag). The latency
floor of a sweep row (``latency_floor_ms``) is layers x T x ``barrier_h`` for the forward, twice that forward and
backward (the backward recurrence needs at least one more barrier and broadcast per step): the least any design
with one barrier and one h broadcast a step can take on this grid, whatever its arithmetic.

Under the interpreter (no GPU) each group is one program and the barrier passes at once: that checks the
kernel's arithmetic and this script, not the GPU's latency. ``--compile-only`` runs each grid once (filling
Triton's cache); ``--aot ARCH`` compiles every variant for sm_ARCH without a GPU.
"""

import argparse
import csv
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.configs import BenchConfig
from bench.environment import bench_device, describe_machine, use_interpreter_without_cuda

# Before Triton is imported: its language helpers and every kernel pick the interpreter (or not) when decorated.
use_interpreter_without_cuda()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from bench.results import FLOOR_COLUMNS, floor_key  # noqa: E402
from triton_lstm.kernels.sync import group_barrier  # noqa: E402

STEPS = (100, 1100)  # the two launch lengths on a GPU; their difference gives us per step
CHECK_STEPS = 100  # h = 100 is exact in every dtype (bf16 holds integers up to 256)
REPS = 5
INTERPRETER_STEPS = (2, 4)
NUM_WARPS = 4
# Elements of h one program loads per chunk of the read (rows x columns): wide enough for many loads in flight,
# small enough for registers.
CHUNK_ELEMENTS = 8192


@triton.jit(do_not_specialize=["steps", "batch"])
def step_floor_kernel(
    h_ptr,  # (2, D, B, H_OUT): h_t in slot t % 2
    counter_ptr,  # (D * batch tiles,) int32, zero at launch
    steps_done_ptr,  # (D * batch tiles * programs,) int32: steps each program ran
    steps,
    batch,
    H_OUT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_K: tl.constexpr,
    READ_H: tl.constexpr,
    CROSS_PROGRAM: tl.constexpr,
):
    i_b = tl.program_id(0)
    i_p = tl.program_id(1)
    i_d = tl.program_id(2)
    n_b = tl.num_programs(0)
    n_p = tl.num_programs(1)
    n_d = tl.num_programs(2)
    counter = counter_ptr + i_d * n_b + i_b
    h_dtype = h_ptr.dtype.element_ty

    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < batch
    slot = n_d.to(tl.int64) * batch * H_OUT
    p_h = h_ptr + i_d.to(tl.int64) * batch * H_OUT + o_b.to(tl.int64)[:, None] * H_OUT
    o_u = i_p * BLOCK_U + tl.arange(0, BLOCK_U)
    m_bu = m_b[:, None] & (o_u < H_OUT)[None, :]

    arrivals = 0
    step = 0
    while step < steps:
        if READ_H:
            total = tl.zeros((BLOCK_B,), dtype=tl.float32)
            for k0 in range(0, H_OUT, BLOCK_K):
                o_k = k0 + tl.arange(0, BLOCK_K)
                m_bk = m_b[:, None] & (o_k < H_OUT)[None, :]
                h = tl.load(p_h + (step % 2) * slot + o_k[None, :], mask=m_bk, other=0.0, cache_modifier=".cg")
                total += tl.sum(h.to(tl.float32), axis=1)
            new = total / H_OUT + 1.0
            value = tl.broadcast_to(new[:, None], (BLOCK_B, BLOCK_U))
            tl.store(p_h + ((step + 1) % 2) * slot + o_u[None, :], value.to(h_dtype), mask=m_bu)
        arrivals += n_p
        group_barrier(counter, arrivals, CROSS_PROGRAM)
        step += 1
    tl.store(steps_done_ptr + (i_d * n_b + i_b) * n_p + i_p, step)


@dataclass(frozen=True)
class FloorGrid:
    """The grid of our persistent forward for one (dtype, H, H_out, B, directions), and the floor kernel's tiles."""

    dtype: str
    hidden_size: int
    h_out: int
    batch: int
    directions: int
    batch_tiles: int
    programs: int
    block_b: int
    block_u: int
    block_k: int

    @property
    def key(self) -> str:
        return floor_key(self.dtype, self.hidden_size, self.h_out, self.batch, self.directions)


def config_floor_key(config: BenchConfig) -> str:
    """``floor_key`` of a configuration."""
    return floor_key(config.dtype, config.hidden_size, config.output_size, config.batch, config.num_directions)


def floor_grid(config: BenchConfig, device: torch.device) -> FloorGrid | str:
    """The floor kernel's grid and tiles for ``config``, or why our persistent kernel has no grid for it."""
    from triton_lstm.launch_persistent import plan

    planned = plan(
        config.hidden_size, config.output_size, config.batch, config.num_directions, config.torch_dtype, device
    )
    if isinstance(planned, str):
        return planned
    rows = triton.cdiv(config.batch, planned.batch_tiles)
    block_b = triton.next_power_of_2(rows)
    h_out = config.output_size
    return FloorGrid(
        dtype=config.dtype,
        hidden_size=config.hidden_size,
        h_out=h_out,
        batch=config.batch,
        directions=config.num_directions,
        batch_tiles=planned.batch_tiles,
        programs=planned.programs,
        block_b=block_b,
        block_u=triton.next_power_of_2(triton.cdiv(h_out, planned.programs)),
        block_k=min(triton.next_power_of_2(h_out), max(16, CHUNK_ELEMENTS // block_b)),
    )


class FloorRun:
    """Buffers and launches of the floor kernel on one grid."""

    def __init__(self, grid: FloorGrid, device: torch.device):
        self.grid = grid
        self.device = device
        dtype = getattr(torch, grid.dtype)
        self.h = torch.zeros(2, grid.directions, grid.batch, grid.h_out, dtype=dtype, device=device)
        groups = grid.directions * grid.batch_tiles
        self.counter = torch.zeros(groups, dtype=torch.int32, device=device)
        self.steps_done = torch.full((groups * grid.programs,), -1, dtype=torch.int32, device=device)

    def launch(self, steps: int, read_h: bool) -> None:
        """One launch of ``steps`` steps (the barrier counter reset first)."""
        grid = self.grid
        self.counter.zero_()
        options = {"launch_cooperative_grid": True} if self.device.type == "cuda" else {}
        step_floor_kernel[(grid.batch_tiles, grid.programs, grid.directions)](
            self.h, self.counter, self.steps_done, steps, grid.batch,
            H_OUT=grid.h_out, BLOCK_B=grid.block_b, BLOCK_U=grid.block_u, BLOCK_K=grid.block_k, READ_H=read_h,
            CROSS_PROGRAM=grid.programs > 1, num_warps=NUM_WARPS, num_stages=1, **options,
        )  # fmt: skip

    def check(self, steps: int) -> str:
        """Run ``steps`` barrier_h steps from h = 0: every program must have run them all and every element of h_t
        must be exactly ``steps`` ("ok"), else what was wrong."""
        self.h.zero_()
        self.launch(steps, read_h=True)
        done = self.steps_done.cpu()
        final = self.h[steps % 2].float().cpu()
        if not bool((done == steps).all()):
            return f"failed: programs ran {sorted(set(done.tolist()))} steps, not {steps}"
        wrong = (final != steps).sum().item()
        if wrong:
            return f"failed: {wrong} of {final.numel()} elements of h differ from {steps} (min {final.min().item()})"
        return "ok"

    def time_ms(self, steps: int, read_h: bool, reps: int) -> float:
        """Median milliseconds of a launch of ``steps`` steps."""
        times = []
        for _ in range(reps):
            if self.device.type == "cuda":
                self.counter.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                self.launch(steps, read_h)
                end.record()
                torch.cuda.synchronize(self.device)
                times.append(start.elapsed_time(end))
            else:
                import time

                begin = time.perf_counter()
                self.launch(steps, read_h)
                times.append((time.perf_counter() - begin) * 1e3)
        return statistics.median(times)

    def us_per_step(self, read_h: bool, steps: tuple[int, int], reps: int) -> float:
        short, long = (self.time_ms(count, read_h, reps) for count in steps)
        return (long - short) * 1e3 / (steps[1] - steps[0])


def unique_grids(configs, device) -> list[FloorGrid | tuple[str, BenchConfig]]:
    """One entry per distinct floor key of ``configs``: its grid, or (why none, the first such configuration)."""
    seen, grids = set(), []
    for config in configs:
        key = config_floor_key(config)
        if key in seen:
            continue
        seen.add(key)
        grid = floor_grid(config, device)
        grids.append(grid if isinstance(grid, FloorGrid) else (grid, config))
    return grids


def aot_compile(arch: int) -> list[str]:
    """Compile every variant of the kernel for sm_``arch`` (no GPU needed); returns one line per variant."""
    from triton.backends.compiler import GPUTarget

    lines = []
    for dtype in ("fp16", "fp32", "fp64"):
        for read_h in (False, True):
            signature = {"h_ptr": f"*{dtype}", "counter_ptr": "*i32", "steps_done_ptr": "*i32", "steps": "i32",
                         "batch": "i32"}  # fmt: skip
            constexprs = {"H_OUT": 1024, "BLOCK_B": 16, "BLOCK_U": 8, "BLOCK_K": 512, "READ_H": read_h,
                          "CROSS_PROGRAM": True}  # fmt: skip
            signature.update(dict.fromkeys(constexprs, "constexpr"))
            source = triton.compiler.ASTSource(fn=step_floor_kernel, signature=signature, constexprs=constexprs)
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": NUM_WARPS})
            ptx = compiled.asm["ptx"]
            loads = "ld.global.cg" in ptx
            barrier = "red.release.gpu.global.add" in ptx and "ld.acquire.gpu" in ptx
            if barrier is False or loads is not read_h:
                raise RuntimeError(f"sm_{arch} {dtype} read_h={read_h}: .cg loads {loads}, grid barrier {barrier}")
            lines.append(f"sm_{arch} {dtype} read_h={read_h}: ok (.cg loads {loads}, grid barrier in PTX), shared "
                         f"{compiled.metadata.shared} B")  # fmt: skip
    return lines


def parse_args(argv):
    from bench.sweep import add_config_arguments

    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--out", help="CSV to write (one row per distinct grid)")
    parser.add_argument("--reps", type=int, help=f"timed launches per length (default {REPS} on a GPU, 1 on the CPU)")
    parser.add_argument("--compile-only", action="store_true", help="run each grid once (fills Triton's cache)")
    parser.add_argument("--aot", type=int, metavar="ARCH", help="compile every variant for sm_ARCH and exit")
    args = parser.parse_args(argv)
    if not (args.compile_only or args.aot or args.out):
        parser.error("--out is required unless --compile-only or --aot")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.aot:
        print("\n".join(aot_compile(args.aot)))
        return 0
    from bench.providers import accepts_packed
    from bench.sweep import select_configs

    device = bench_device()
    _, configs = select_configs(args, accepts_packed(device), device)
    grids = unique_grids(configs, device)
    on_gpu = device.type == "cuda"
    steps = STEPS if on_gpu else INTERPRETER_STEPS
    check_steps = CHECK_STEPS if on_gpu else INTERPRETER_STEPS[0]
    reps = args.reps or (REPS if on_gpu else 1)
    if args.compile_only:
        for grid in grids:
            if isinstance(grid, FloorGrid):
                run = FloorRun(grid, device)
                run.launch(2, read_h=False)
                run.launch(2, read_h=True)
        print(f"compiled {len(grids)} floor grids", file=sys.stderr)
        return 0
    machine = describe_machine(device)
    common = {key: getattr(machine, key) for key in ("device", "torch_version", "triton_version", "git_commit",
                                                     "timestamp", "note")}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=FLOOR_COLUMNS)
        writer.writeheader()
        for grid in grids:
            if not isinstance(grid, FloorGrid):
                reason, config = grid
                row = {**common, "key": config_floor_key(config), "dtype": config.dtype,
                       "hidden_size": config.hidden_size, "h_out": config.output_size, "batch": config.batch,
                       "directions": config.num_directions, "status": "skipped", "reason": reason}  # fmt: skip
            else:
                row = {**common, **asdict(grid), "key": grid.key, "steps_short": steps[0], "steps_long": steps[1]}
                try:
                    run = FloorRun(grid, device)
                    row["check"] = run.check(check_steps)
                    row["barrier_us"] = f"{run.us_per_step(False, steps, reps):.4g}"
                    row["barrier_h_us"] = f"{run.us_per_step(True, steps, reps):.4g}"
                    row["status"] = "ok" if row["check"] == "ok" else "error"
                except Exception as error:
                    row.update(status="error", reason=" ".join(f"{type(error).__name__}: {error}".split())[:300])
            writer.writerow(row)
            file.flush()
            grid_text = f"{row.get('batch_tiles', '-')} x {row.get('programs', '-')} x {row['directions']}"
            print(
                f"{row['key']}: grid {grid_text}, barrier {row.get('barrier_us', '-')} us, barrier+h "
                f"{row.get('barrier_h_us', '-')} us, check {row.get('check', '-')}: {row['status']} "
                f"{row.get('reason', '')}",
                file=sys.stderr,
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
