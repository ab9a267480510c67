"""GPU resource report without a GPU: compile every kernel ahead of time and read its resources.

    python -m triton_lstm.aot            # the representative subset CI runs (sm_80 and sm_90)
    python -m triton_lstm.aot --full     # every config of every shipped space, more persistent sizes

For each (kernel, config, dtype, arch) it compiles with Triton for that target as the runtime would (the same
options, and the same argument specialization as contiguous tensors: pointers 16-byte aligned, strides multiples
of 16), reads registers and spills from the ``ptxas -v`` log of Triton's own ptxas run (so with Triton's exact
ptxas and flags, whatever its version) and shared memory from the compile metadata, and prints one table row.
dtype ``tf32`` is float32 with TF32 products (torch's default for its LSTM on CUDA), ``fp32`` exact float32.

The persistent kernels are compiled with the tiles their launcher plans (``launch_persistent.plan_for``) for model
sizes on an A100 (108 SMs) and an H100/H200 (132 SMs), and their rows add what one time step does, read from the
compiled code (``asm_facts``): W bytes loaded from global memory per step (W_hh and W_hr), the matrix instructions
in the time loop, block barriers, grid barriers and polls per step.

It exits non-zero if any row spills, uses more shared memory than one block may on that arch, or fails to compile,
or if a persistent plan that keeps its weights on chip loads them inside the time loop, a half-precision or TF32
plan multiplies without tensor cores, a poll loop holds a block barrier, or a step has more grid barriers than its
phases. With ``TRITON_INTERPRET=1`` set (the kernels would be interpreted, not compiled) it runs itself again in a
process without it.
"""

import argparse
import contextlib
import io
import itertools
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget

from triton_lstm import asm_facts, tuning
from triton_lstm.kernels.persistent_backward import lstm_persistent_backward_kernel
from triton_lstm.kernels.persistent_forward import lstm_persistent_forward_kernel
from triton_lstm.kernels.step_backward import lstm_step_backward_kernel
from triton_lstm.kernels.step_forward import lstm_step_forward_kernel

# Shared memory one block may use (opt-in maximum): A100 (sm_80) and H100/H200 (sm_90).
SHARED_LIMITS = {80: 166_912, 90: 232_448}
# Report dtypes: Triton's name of the operands' type, and whether float32 products use TF32.
DTYPES = {"fp32": ("fp32", False), "tf32": ("fp32", True), "fp64": ("fp64", False), "fp16": ("fp16", False),
          "bf16": ("bf16", False)}  # fmt: skip
TENSOR_CORE_DTYPES = ("tf32", "fp16", "bf16")
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
    # Persistent kernels only: the plan's residency, the phases of a step, and what the time loop does.
    resident: bool | None = None
    phases: int = 1
    weight_bytes: int | None = None
    loop: asm_facts.LoopFacts | None = None

    def failures(self) -> list[str]:
        """Why this row fails the report (empty when it passes)."""
        if self.error:
            return [self.error]
        found = []
        if self.spill_bytes:
            found.append(f"spills {self.spill_bytes} bytes")
        if self.shared > SHARED_LIMITS[self.arch]:
            found.append(f"{self.shared} bytes of shared memory")
        if self.loop is not None:
            if self.resident and self.weight_bytes:
                found.append("resident plan loads W inside the time loop")
            if self.dtype in TENSOR_CORE_DTYPES and not self.loop.tensor_cores:
                found.append("no tensor-core MMA in the time loop")
            if self.loop.barriers_in_polls:
                found.append("block barrier inside a poll loop")
            if self.loop.grid_arrivals != self.phases:
                found.append(f"{self.loop.grid_arrivals} grid barriers a step, expected {self.phases}")
        return found


def _accumulator(dtype: str) -> str:
    return "fp64" if dtype == "fp64" else "fp32"


def _operand(dtype: str) -> str:
    return DTYPES[dtype][0]


def _tf32(kernel, dtype: str) -> dict:
    """The TF32 flag of kernels that have one."""
    return {"TF32": DTYPES[dtype][1]} if "TF32" in kernel.arg_names else {}


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
        if name in constexprs or (param.is_constexpr and param.has_default):
            # A constexpr the launchers leave out takes its default, as at a launch.
            signature[name] = "constexpr"
            constexprs.setdefault(name, param.default)
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
    operand = _operand(dtype)
    pointers = {name: f"*{operand}" for name in ("x_proj_ptr", "w_hh_ptr", "w_hr_ptr", "hs_ptr", "ms_ptr")}
    pointers.update({name: f"*{acc}" for name in ("bias_ptr", "cs_ptr", "gates_ptr")})
    pointers["lengths_ptr"] = "*i32"
    constexprs = {"HIDDEN": 1024, "H_OUT": 1024, "HAS_BIAS": True, "HAS_LENGTHS": True, "SAVE": True, "UPCAST": False,
                  **_tf32(lstm_step_forward_kernel, dtype), **config}  # fmt: skip
    return pointers, constexprs, STEP_BATCH


def _step_backward(dtype, config, arch):
    acc = _accumulator(dtype)
    pointers = {name: f"*{acc}" for name in lstm_step_backward_kernel.arg_names if name.endswith("_ptr")}
    pointers.update({"w_hh_ptr": f"*{_operand(dtype)}", "w_hr_ptr": f"*{_operand(dtype)}", "lengths_ptr": "*i32"})
    constexprs = {"HIDDEN": 1024, "H_OUT": 1024, "HAS_LENGTHS": True, **_tf32(lstm_step_backward_kernel, dtype),
                  **config}  # fmt: skip
    return pointers, constexprs, STEP_BATCH


@dataclass(frozen=True)
class Model:
    """The sizes a persistent plan is made for (I = H: the input size does not enter the recurrent kernels)."""

    hidden: int
    proj: int  # 0: no projection
    batch: int
    directions: int
    layers: int = 1  # > 1: one-direction stacked layers in one launch (``launch_stack``), with dropout

    @property
    def h_out(self) -> int:
        return self.proj or self.hidden

    @property
    def groups(self) -> int:
        """Grid axis 2: the directions, or a stack's layers."""
        return self.layers if self.layers > 1 else self.directions

    def stack_constexprs(self) -> dict:
        return {"LAYERS": self.layers, "DROPOUT": True} if self.layers > 1 else {}

    def __str__(self) -> str:
        stack = f"-L{self.layers}" if self.layers > 1 else ""
        return f"H{self.hidden}{f'-P{self.proj}' if self.proj else ''}-B{self.batch}-D{self.directions}{stack}"


# The weight arguments whose loads inside the time loop count as W bytes per step.
WEIGHTS = ("w_hh_ptr", "w_hr_ptr", "w_ih_ptr")
# One persistent program per SM (launch_persistent.DeviceFacts): an A100 holds 108, an H100/H200 132.
_PLAN_CAPACITY = {80: 108, 90: 132}


def _plan(model: Model, dtype: str, arch: int, *, backward: bool):
    """The tiles ``launch_persistent.plan`` picks for ``model`` on an A100 (sm_80) or H100 (sm_90)."""
    import torch

    from triton_lstm import launch_persistent

    torch_dtype = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16, "bf16": torch.bfloat16}
    facts = launch_persistent.DeviceFacts(_PLAN_CAPACITY[arch], arch, SHARED_LIMITS[arch])
    plan = launch_persistent.plan_for(model.hidden, model.h_out, model.batch, model.groups,
                                      torch_dtype[_operand(dtype)], facts, backward=backward,
                                      tf32=DTYPES[dtype][1], stacked=model.layers > 1)  # fmt: skip
    if isinstance(plan, str):
        raise ValueError(plan)
    return plan


def _persistent_forward(dtype, model: Model, plan):
    acc, operand = _accumulator(dtype), _operand(dtype)
    operands = ("x_proj_ptr", "w_hh_ptr", "w_hr_ptr", "w_ih_ptr", "mask_ptr", "hs_ptr", "unprojected_ptr")
    pointers = {name: f"*{operand}" for name in operands}
    pointers.update({name: f"*{acc}" for name in ("bias_ptr", "cs_ptr", "gates_ptr")})
    pointers.update({"lengths_ptr": "*i32", "sync_ptr": "*i32"})
    constexprs = {"HIDDEN": model.hidden, "H_OUT": model.h_out, "HAS_BIAS": True, "HAS_PROJ": bool(model.proj),
                  "HAS_LENGTHS": True, "SAVE": True, "GRID_SYNC": True, "UPCAST": False, "TF32": DTYPES[dtype][1],
                  **plan.meta(backward=False), **model.stack_constexprs()}  # fmt: skip
    return pointers, constexprs


def _persistent_backward(dtype, model: Model, plan):
    acc, operand = _accumulator(dtype), _operand(dtype)
    pointers = {name: f"*{acc}" for name in lstm_persistent_backward_kernel.arg_names if name.endswith("_ptr")}
    pointers.update({name: f"*{operand}" for name in ("w_hh_ptr", "w_hr_ptr", "w_ih_ptr", "mask_ptr")})
    pointers.update({"lengths_ptr": "*i32", "sync_ptr": "*i32"})
    constexprs = {"HIDDEN": model.hidden, "H_OUT": model.h_out, "HAS_PROJ": bool(model.proj), "HAS_LENGTHS": True,
                  "GRID_SYNC": True, "UPCAST": False, "TF32": DTYPES[dtype][1], **plan.meta(backward=True),
                  **model.stack_constexprs()}  # fmt: skip
    return pointers, constexprs


# Models whose plans are compiled: W_hh on chip (every size up to H = 1024 with one direction), two directions,
# several batch tiles, a projection, a size past what the chip holds (streamed), and stacks in one launch (with their
# W_ih resident or streamed, and a projection).
PERSISTENT_MODELS = (Model(256, 0, 16, 1), Model(1024, 0, 16, 1), Model(1024, 0, 16, 2), Model(1024, 256, 16, 1),
                     Model(768, 0, 64, 1), Model(256, 0, 1, 2), Model(2048, 0, 16, 1), Model(512, 0, 16, 1, layers=3),
                     Model(1024, 0, 16, 1, layers=2), Model(1024, 256, 16, 1, layers=2))  # fmt: skip
# CI's subset of them.
PERSISTENT_SUBSET = (Model(256, 0, 16, 1), Model(1024, 0, 16, 1), Model(1024, 256, 16, 1),
                     Model(512, 0, 16, 1, layers=3))  # fmt: skip


def _spaces(full: bool):
    """(name, kernel, describe, configs) of every kernel: step kernels with their config spaces as (meta dict,
    num_warps, num_stages), persistent kernels with the models whose plans they run."""

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
    if not full:
        # CI's subset: the first config (the default when autotuning is off) and the largest blocks of each step
        # kernel.
        step_forward = [step_forward[0], step_forward[-1]]
        step_backward = [step_backward[0], step_backward[-1]]
    step_forward, step_backward = with_projection(step_forward), with_projection(step_backward)
    models = PERSISTENT_MODELS if full else PERSISTENT_SUBSET
    return [
        ("step_forward", lstm_step_forward_kernel, _step_forward, step_forward),
        ("step_backward", lstm_step_backward_kernel, _step_backward, step_backward),
        ("persistent_forward", lstm_persistent_forward_kernel, _persistent_forward, models),
        ("persistent_backward", lstm_persistent_backward_kernel, _persistent_backward, models),
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


def _resources(row: Row, kernel, pointers, constexprs, batch, options) -> tuple | None:
    """Compile and fill the row's resources; the compiled kernel, or None after a failure (recorded in the row)."""
    signature, constexprs, attrs = _specialize(kernel, pointers, constexprs, batch)
    start = time.perf_counter()
    compiled = None
    try:
        compiled, log = _compile(kernel, signature, constexprs, attrs, row.arch, options)
        row.shared = compiled.metadata.shared
        row.registers, row.spill_bytes = _ptxas_resources(log)
    except Exception as error:  # every failure, of any kind, becomes a failing row of the report
        row.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:120]
    row.seconds = time.perf_counter() - start
    return compiled


def compile_row(name, kernel, describe, config, dtype, arch) -> Row | None:
    """Compile one (kernel, config, dtype, arch); None for a config the runtime never ships for that dtype.

    ``config``: (meta, num_warps, num_stages) of a step kernel, or the Model of a persistent one.
    """
    if name.startswith("persistent"):
        model = config
        backward = name.endswith("backward")
        row = Row(name, str(model), dtype, arch, phases=2 if model.proj else 1)
        try:
            plan = _plan(model, dtype, arch, backward=backward)
        except ValueError as error:
            row.error = f"no plan: {error}"
            return row
        row.config = f"{model}: P={plan.programs} U={plan.block_u} Bt={plan.block_b} K/{plan.k_split} w{plan.num_warps}"
        row.resident = plan.resident
        pointers, constexprs = describe(dtype, model, plan)
        # The launcher's options; the persistent kernels launch cooperatively (a launch option, no code change).
        options = {"num_warps": plan.num_warps, "num_stages": 1, "launch_cooperative_grid": True}
        compiled = _resources(row, kernel, pointers, constexprs, model.batch, options)
        if compiled is not None:
            try:
                row.weight_bytes = asm_facts.weight_bytes_per_step(compiled.asm["ttgir"], WEIGHTS)
                row.loop = asm_facts.loop_facts(compiled.asm["ptx"])
            except ValueError as error:
                row.error = f"time loop not understood: {error}"[:120]
        return row
    meta, num_warps, num_stages = config
    label = ",".join(f"{k}={v}" for k, v in meta.items()) + f",warps={num_warps},stages={num_stages}"
    row = Row(name, label, dtype, arch)
    shipped = triton.Config(meta, num_warps=num_warps, num_stages=num_stages)
    if not tuning.fits(shipped, int(_operand(dtype)[2:]), meta.get("HAS_PROJ", False)):
        return None
    pointers, constexprs, batch = describe(dtype, dict(meta), arch)
    _resources(row, kernel, pointers, constexprs, batch, {"num_warps": num_warps, "num_stages": num_stages})
    return row


def _format(row: Row) -> str:
    resources = f"{row.registers or 0:>4} {row.spill_bytes or 0:>5} {row.shared or 0:>7}"
    if row.loop is not None:
        loop = row.loop
        step = (f"{'yes' if row.resident else 'no':>4} {row.weight_bytes:>9} {loop.block_barriers:>4} "
                f"{loop.grid_arrivals:>4} {loop.polls:>5}  {loop.mma_summary()}")  # fmt: skip
    else:
        step = f"{'-':>4} {'-':>9} {'-':>4} {'-':>4} {'-':>5}  -"
    failures = row.failures()
    status = f"  FAIL {'; '.join(failures)}" if failures else ""
    head = f"{row.kernel:<19} {row.config:<60} {row.dtype:<4} sm_{row.arch:<2}"
    return f"{head} {resources} {row.seconds:>4.1f}s {step}{status}"


def main(argv=None) -> int:
    if tuning.INTERPRETED:
        # triton.jit chose the interpreter at import: compile in a process that does not ask for it.
        env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
        command = [sys.executable, "-m", "triton_lstm.aot", *(sys.argv[1:] if argv is None else argv)]
        print("TRITON_INTERPRET is set: compiling in a subprocess without it", flush=True)
        return subprocess.run(command, env=env, check=False).returncode
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every config, dtype and persistent size (minutes)")
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS, help="restrict to an arch (repeat)")
    parser.add_argument("--dtype", action="append", choices=list(DTYPES), help="restrict to a dtype (repeat)")
    parser.add_argument("--kernel", action="append", choices=KERNELS, help="restrict to a kernel (repeat)")
    args = parser.parse_args(argv)
    archs = args.arch or ARCHS
    dtypes = args.dtype or list(DTYPES)

    header = (f"{'kernel':<19} {'config':<60} {'type':<4} {'arch':<5} {'regs':>4} {'spill':>5} {'shared':>7} "
              f"{'time':>5} {'res':>4} {'W B/step':>9} {'bars':>4} {'grid':>4} {'polls':>5}  "
              "mma in the time loop")  # fmt: skip
    print(header)
    print("-" * len(header))
    failures = 0
    for name, kernel, describe, configs in _spaces(args.full):
        if args.kernel and name not in args.kernel:
            continue
        for config, dtype, arch in itertools.product(configs, dtypes, archs):
            row = compile_row(name, kernel, describe, config, dtype, arch)
            if row is None:
                continue
            print(_format(row), flush=True)
            failures += bool(row.failures())
    print(f"{failures} failing row(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
