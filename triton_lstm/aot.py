"""GPU resource report without a GPU: compile every kernel ahead of time and read its resources.

    python -m triton_lstm.aot            # the representative subset CI runs (sm_80 and sm_90)
    python -m triton_lstm.aot --full     # every config of every shipped space, every dtype

For each (kernel, config, dtype, arch) it compiles with Triton for that target as the runtime would (the same
options, and the same argument specialization as contiguous tensors: pointers 16-byte aligned, strides multiples
of 16), reads registers and spills from the ``ptxas -v`` log of Triton's own ptxas run (so with Triton's exact
ptxas and flags, whatever its version) and shared memory from the compile metadata, and prints one table row. It
exits non-zero if any compiled config spills, uses more shared memory than one block may on that arch, or fails
to compile.
"""

import argparse
import contextlib
import io
import itertools
import re
import sys
import time
from dataclasses import dataclass

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget

from triton_lstm import tuning
from triton_lstm.kernels.persistent_backward import lstm_persistent_backward_kernel
from triton_lstm.kernels.persistent_forward import lstm_persistent_forward_kernel
from triton_lstm.kernels.step_backward import lstm_step_backward_kernel
from triton_lstm.kernels.step_forward import lstm_step_forward_kernel

# Shared memory one block may use (opt-in maximum): A100 (sm_80) and H100/H200 (sm_90).
SHARED_LIMITS = {80: 166_912, 90: 232_448}
DTYPES = {"fp32": "fp32", "fp64": "fp64", "fp16": "fp16", "bf16": "bf16"}
ARCHS = (80, 90)
KERNELS = ("step_forward", "step_backward", "persistent_forward", "persistent_backward")


@dataclass
class Row:
    kernel: str
    config: str
    dtype: str
    arch: int
    registers: int | None = None
    spill_bytes: int | None = None
    shared: int | None = None
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.spill_bytes == 0 and self.shared <= SHARED_LIMITS[self.arch]


def _accumulator(dtype: str) -> str:
    return "fp64" if dtype == "fp64" else "fp32"


# Triton's launcher specializes each argument on its value (``triton.runtime.jit``): a pointer 16-byte aligned, an
# integer that is a multiple of 16 get ``tt.divisibility = 16`` (vectorized, aligned loads and stores); an integer
# equal to 1 becomes a constant; ``do_not_specialize`` arguments get nothing. Compiling without these would report
# the kernel that only misaligned tensors run, whose code and registers differ.
_DIVISIBLE = [["tt.divisibility", 16]]

# The batch the step kernels are compiled for (only their masks see it): not a multiple of 16; 16 passes as well.
STEP_BATCH = 17


def _specialize(kernel, pointers: dict, constexprs: dict, batch: int) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as the launcher specializes the arguments of contiguous tensors: pointers
    by role and 16-byte aligned, the batch by its value, every other integer a multiple of 16 (all of them are
    strides, multiples of H, and every H reported is a multiple of 16)."""
    signature, constexprs, attrs = {}, dict(constexprs), {}
    for index, param in enumerate(kernel.params):
        name = param.name
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = batch if name == "batch" else 16
        if name in pointers:
            signature[name] = pointers[name]
            attrs[(index,)] = _DIVISIBLE
        elif value == 1 and not param.do_not_specialize:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32"
            if value % 16 == 0 and not param.do_not_specialize:
                attrs[(index,)] = _DIVISIBLE
    return signature, constexprs, attrs


def _step_forward(dtype, config, arch):
    acc = _accumulator(dtype)
    pointers = {name: f"*{dtype}" for name in ("x_proj_ptr", "w_hh_ptr", "w_hr_ptr", "hs_ptr", "ms_ptr")}
    pointers.update({name: f"*{acc}" for name in ("bias_ptr", "cs_ptr", "gates_ptr")})
    pointers["lengths_ptr"] = "*i32"
    constexprs = {"HIDDEN": 1024, "H_OUT": 1024, "HAS_BIAS": True, "HAS_LENGTHS": True, "SAVE": True, "UPCAST": False,
                  **config}  # fmt: skip
    return pointers, constexprs, STEP_BATCH


def _step_backward(dtype, config, arch):
    acc = _accumulator(dtype)
    pointers = {name: f"*{acc}" for name in lstm_step_backward_kernel.arg_names if name.endswith("_ptr")}
    pointers.update({"w_hh_ptr": f"*{dtype}", "w_hr_ptr": f"*{dtype}", "lengths_ptr": "*i32"})
    constexprs = {"HIDDEN": 1024, "H_OUT": 1024, "HAS_LENGTHS": True, **config}
    return pointers, constexprs, STEP_BATCH


def _persistent_forward(dtype, config, arch):
    acc = _accumulator(dtype)
    hidden, batch = config.pop("HIDDEN"), config.pop("BATCH")
    config.update(_planned(hidden, dtype, batch, config.pop("DIRECTIONS"), arch, backward=False))
    pointers = {name: f"*{dtype}" for name in ("x_proj_ptr", "w_hh_ptr", "w_hr_ptr", "hs_ptr", "unprojected_ptr")}
    pointers.update({name: f"*{acc}" for name in ("bias_ptr", "cs_ptr", "gates_ptr")})
    pointers.update({"lengths_ptr": "*i32", "sync_ptr": "*i32"})
    constexprs = {"HIDDEN": hidden, "H_OUT": hidden, "HAS_BIAS": True, "HAS_PROJ": False, "HAS_LENGTHS": True,
                  "GRID_SYNC": True, "SAVE": True, "UPCAST": False, "UNIT_TILES": 1, "COL_TILES": 1,
                  "BLOCK_N": config["BLOCK_U"], **config}  # fmt: skip
    return pointers, constexprs, batch


def _persistent_backward(dtype, config, arch):
    acc = _accumulator(dtype)
    hidden, batch = config.pop("HIDDEN"), config.pop("BATCH")
    config.update(_planned(hidden, dtype, batch, config.pop("DIRECTIONS"), arch, backward=True))
    pointers = {name: f"*{acc}" for name in lstm_persistent_backward_kernel.arg_names if name.endswith("_ptr")}
    pointers.update({"w_hh_ptr": f"*{dtype}", "w_hr_ptr": f"*{dtype}", "lengths_ptr": "*i32", "sync_ptr": "*i32"})
    config.pop("HOIST_W")
    constexprs = {"HIDDEN": hidden, "H_OUT": hidden, "UNIT_TILES": 1, "COL_TILES": 1, "BLOCK_N": config["BLOCK_U"],
                  "HAS_PROJ": False, "HAS_LENGTHS": True, "GRID_SYNC": True, **config}  # fmt: skip
    return pointers, constexprs, batch


# One persistent program per SM: an A100 holds 108, an H100/H200 132.
_PLAN_CAPACITY = {80: 108, 90: 132}


def _planned(hidden: int, dtype: str, batch: int, directions: int, arch: int, *, backward: bool) -> dict:
    """The tiles ``launch_persistent.plan`` picks for these sizes (and pass) on an A100 (sm_80) or H100 (sm_90)."""
    import torch

    from triton_lstm import launch_persistent

    torch_dtype = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16, "bf16": torch.bfloat16}
    plan = launch_persistent.plan_for(
        hidden,
        hidden,
        batch,
        directions,
        torch_dtype[dtype],
        _PLAN_CAPACITY[arch],
        backward=backward,
        arch=arch,
    )
    if isinstance(plan, str):
        raise ValueError(plan)
    return {"BLOCK_B": plan.block_b, "BLOCK_U": plan.block_u, "BLOCK_K": plan.block_k, "HOIST_W": plan.hoist_w}


def _spaces(full: bool):
    """(name, kernel, describe, configs as (meta dict, num_warps, num_stages)) of every kernel."""

    def from_tuning(configs):
        return [(dict(c.kwargs), c.num_warps, c.num_stages) for c in configs]

    # Step configs that the runtime prunes for a dtype (tuning.fits) are not shipped for it: compile_row skips them.
    # Each is compiled with and without the in-kernel projection (proj_size > 0), a separate path of their code.
    def with_projection(configs):
        return [
            ({**meta, "HAS_PROJ": proj}, warps, stages) for proj in (False, True) for meta, warps, stages in configs
        ]

    step_forward = from_tuning(tuning.forward_configs())
    step_backward = from_tuning(tuning.backward_configs())
    # The persistent tiles are not a space but the launcher's plan for the sizes (launch_persistent.plan_for):
    # these sizes cover W_hh hoisted on chip (H = 256) and streamed (768, 1024), batch tiles of 16 and 32.
    sizes = ((256, 16, 1), (256, 32, 2), (768, 1, 1), (1024, 16, 2))

    def persistent(configs):
        return [({"HIDDEN": h, "BATCH": b, "DIRECTIONS": d}, c.num_warps, c.num_stages)
                for h, b, d in sizes for c in configs]  # fmt: skip

    persistent_forward = persistent(tuning.persistent_forward_configs())
    persistent_backward = persistent(tuning.persistent_backward_configs())
    if not full:
        # CI's subset: the first config (the default when autotuning is off) and the largest blocks of each step
        # kernel; the persistent plans of the most common case, B <= 16.
        step_forward = [step_forward[0], step_forward[-1]]
        step_backward = [step_backward[0], step_backward[-1]]
        persistent_forward = [p for p in persistent_forward if p[0]["BATCH"] == 16]
        persistent_backward = [p for p in persistent_backward if p[0]["BATCH"] == 16]
    step_forward, step_backward = with_projection(step_forward), with_projection(step_backward)
    return [
        ("step_forward", lstm_step_forward_kernel, _step_forward, step_forward),
        ("step_backward", lstm_step_backward_kernel, _step_backward, step_backward),
        ("persistent_forward", lstm_persistent_forward_kernel, _persistent_forward, persistent_forward),
        ("persistent_backward", lstm_persistent_backward_kernel, _persistent_backward, persistent_backward),
    ]


def _ptxas_resources(log: str) -> tuple[int, int]:
    """(registers, spill bytes) from the ``ptxas -v`` log that Triton printed while compiling."""
    registers = re.findall(r"Used (\d+) registers", log)
    if len(registers) != 1:
        raise RuntimeError(f"expected one ptxas resource line, found {len(registers)}")
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    return int(registers[0]), max(spills, default=0)


def _compile(kernel, signature, constexprs, attrs, arch, options):
    """Compile with Triton and return (compiled kernel, Triton's ptxas log). The log is Triton's own ptxas run,
    so it holds what that Triton version passes (``-lineinfo``, ``--regAllocOptLevel``, the ptxas binary it picks
    per arch); a cache hit would run no ptxas, so the cache is bypassed."""
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(
            triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
            target=GPUTarget("cuda", arch, 32),
            options=options,
        )
    return compiled, log.getvalue()


def compile_row(name, kernel, describe, meta, num_warps, num_stages, dtype, arch) -> Row | None:
    """Compile one (kernel, config, dtype, arch); None for a config the runtime never ships for that dtype."""
    label = ",".join(f"{k}={v}" for k, v in meta.items()) + f",warps={num_warps},stages={num_stages}"
    row = Row(name, label, dtype, arch)
    shipped = triton.Config(meta, num_warps=num_warps, num_stages=num_stages)
    if name.startswith("step") and not tuning.fits(shipped, int(dtype[2:]), meta.get("HAS_PROJ", False)):
        return None
    pointers, constexprs, batch = describe(dtype, dict(meta), arch)
    signature, constexprs, attrs = _specialize(kernel, pointers, constexprs, batch)
    # The launcher's options; the persistent kernels launch cooperatively (a launch option, no code change).
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if name.startswith("persistent"):
        options["launch_cooperative_grid"] = True
    start = time.perf_counter()
    try:
        compiled, log = _compile(kernel, signature, constexprs, attrs, arch, options)
        row.shared = compiled.metadata.shared
        row.registers, row.spill_bytes = _ptxas_resources(log)
    except Exception as error:  # every failure, of any kind, becomes a failing row of the report
        row.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:120]
    row.seconds = time.perf_counter() - start
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every config and dtype (slow: many minutes)")
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS, help="restrict to an arch (repeat)")
    parser.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="restrict to a dtype (repeat)")
    parser.add_argument("--kernel", action="append", choices=KERNELS, help="restrict to a kernel (repeat)")
    args = parser.parse_args(argv)
    archs = args.arch or ARCHS
    dtypes = args.dtype or list(DTYPES)

    header = (
        f"{'kernel':<20} {'config':<62} {'dtype':<5} {'arch':<5} {'regs':>4} {'spill':>5} {'shared':>7} {'time':>6}"
    )
    print(header)
    print("-" * len(header))
    failures = 0
    for name, kernel, describe, configs in _spaces(args.full):
        if args.kernel and name not in args.kernel:
            continue
        for (meta, warps, stages), dtype, arch in itertools.product(configs, dtypes, archs):
            row = compile_row(name, kernel, describe, meta, warps, stages, dtype, arch)
            if row is None:
                continue
            status = "" if row.ok else f"  FAIL {row.error or 'spills or exceeds shared memory'}"
            resources = f"{row.registers or 0:>4} {row.spill_bytes or 0:>5} {row.shared or 0:>7}"
            print(f"{row.kernel:<20} {row.config:<62} {row.dtype:<5} sm_{row.arch:<2} {resources} {row.seconds:>5.1f}s"
                  f"{status}", flush=True)  # fmt: skip
            failures += not row.ok
    print(f"{failures} failing row(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
