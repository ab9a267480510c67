"""Large tensors: every offset that can pass 2^31 elements is computed in 64-bit integers.

Shown without allocating anything. Every kernel ``triton_lstm.tuning`` launches is compiled ahead of time for sm_90
(in a subprocess without the interpreter: this works on a machine without a GPU), and its Triton IR (TTIR) is read.
Triton types an integer argument below 2^31 as i32 and computes in i32 unless told otherwise, so a product like
``t * stride_t`` can wrap around silently once T * B * 4H passes 2^31. The rule checked: a pointer is never advanced
by an i32 offset computed from a runtime integer argument (a stride, ``batch``, ``seq_len``, ``step``). One
exception: the direction's program id (``tl.program_id(2)``, 0 or 1) times a size, which stays within one direction's
slice of a step. A second test proves the checker catches an i32 ``t * stride`` product and passes its int64 form.

Largest sizes supported (element counts; the dtype does not matter):

- Whole-sequence buffers: any size. x @ W_ih^T of every step (T, B, D * 4H), and in the persistent kernels the
  saved states and gates (T + 1, D, B, H_out | H | 4H) and their gradients, are indexed with 64-bit time offsets.
- One step's slice: strides are passed by value (Triton types one of 2^31 or more as i64), so the per-step kernels
  take any B; the persistent kernels take their group's slices (direction or layer) at int64 offsets, and their
  rows at ``(group * batch + row)`` elements of one step, so groups * B < 2^31 there.
- W_hh and W_hr of one direction: 4H * H_out < 2^31 (the offsets inside a weight matrix are i32).
- T < 2^31 and B < 2^31: lengths are int32, as are the batch indices.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import triton
import triton.language as tl

from triton_lstm import tuning

ROOT = Path(__file__).resolve().parent.parent

# Compile-time values for every constexpr a kernel may declare: H = H_out = 64, tiles of 16 and 32, and every
# optional path (HAS_*, SAVE*) switched on. A new kernel with another constexpr needs its value here.
CONSTEXPRS = {
    "HIDDEN": 64,
    "H_OUT": 64,
    "K_BLOCK": 64,
    "U_BLOCK": 64,
    "BLOCK_B": 16,
    "BLOCK_H": 32,
    "BLOCK_K": 32,
    "BLOCK_N": 32,
    "BLOCK_U": 32,
    "BLOCK_M": 64,
    "K_SPLIT": 2,
    "K_CHUNK": 16,
    "PROGRAMS": 2,
    "RESIDENT": True,
    "GRID_SYNC": True,
    "LAYERS": 2,
    "DROPOUT": True,
    "UPCAST": False,
    "TF32": False,
    "BLOCK": 32,
}
# Pointer arguments that hold int32 (lengths, barrier counters); every other pointer is given fp32.
INT32_POINTERS = ("lengths_ptr", "sync_ptr")

# Run in a fresh interpreter-free process: reads {"kernels": {name: [module, attribute]}, ...} on stdin, writes
# {name: ttir} (or {name: "error: ..."}) on stdout.
_COMPILE = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget

spec = json.loads(sys.stdin.read())
result = {}
for name, (module, attribute) in spec["kernels"].items():
    kernel = getattr(importlib.import_module(module), attribute)
    signature, constexprs, missing = {}, {}, []
    for index, param in enumerate(kernel.params):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            if param.name in spec["constexprs"]:
                constexprs[(index,)] = spec["constexprs"][param.name]
            elif param.name.startswith(("HAS_", "SAVE")):
                constexprs[(index,)] = True
            else:
                missing.append(param.name)
        elif param.name.endswith("_ptr"):
            signature[param.name] = "*i32" if param.name in spec["int32_pointers"] else "*fp32"
        else:
            signature[param.name] = "i32"
    if missing:
        result[name] = "error: no value for constexpr " + ", ".join(missing)
        continue
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 1})
    result[name] = compiled.asm["ttir"]
print(json.dumps(result))
"""


def _compile_ttir(kernels: dict) -> dict:
    """TTIR of each kernel ({name: (module, attribute)}), compiled for sm_90 in a subprocess."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    spec = {"kernels": kernels, "constexprs": CONSTEXPRS, "int32_pointers": INT32_POINTERS}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"ahead-of-time compile failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


_VALUE = r"%[\w$.-]+"
_DEFINITION = re.compile(rf"^\s*({_VALUE})(?::\d+)? = ([\w.]+)(.*)$")
_ARGUMENT = re.compile(rf"({_VALUE}): (i32|i64|!tt\.ptr<[^>]*>)")
_LOOP_VARIABLE = re.compile(rf"scf\.for ({_VALUE}) = ")
_ITER_ARGS = re.compile(rf"({_VALUE}) = ({_VALUE})")

CLEAN, SLICE, SIZED = 0, 1, 2  # taint of an integer value, ordered


def _operands(text: str) -> list[str]:
    """SSA values used in an op's text, without result indices (%acc#1 -> %acc) and before its type and location."""
    body = text.split(" loc(")[0]
    if " : " in body:
        body = body.rsplit(" : ", 1)[0]
    return [re.sub(r"#\d+$", "", value) for value in re.findall(rf"{_VALUE}(?:#\d+)?", body)]


def wide_offset_violations(ttir: str) -> list[str]:
    """Lines of ``ttir`` that advance a pointer by an i32 offset computed from a runtime integer argument.

    Taint analysis over the SSA values: runtime integer arguments are SIZED; a product with the direction program id
    (``tt.get_program_id z``, at most 1) is a SLICE, the size of one direction's part of a buffer; any other op
    passes on the worst taint of its operands (loop variables and iteration arguments that of their bounds and
    initial values). A ``tt.addptr`` whose offset is i32 and SIZED is a violation.
    """
    taint, direction = {}, set()
    header = next(line for line in ttir.splitlines() if "tt.func" in line)
    for name, kind in _ARGUMENT.findall(header):
        if kind in ("i32", "i64"):
            taint[name] = SIZED
    violations = []
    for line in ttir.splitlines():
        for variable in _LOOP_VARIABLE.findall(line):
            bounds = line.split(" = ", 2)[-1].split(" iter_args")[0]
            taint[variable] = max((taint.get(v, CLEAN) for v in _operands(bounds)), default=CLEAN)
        if "iter_args(" in line or "scf.while (" in line:
            for variable, initial in _ITER_ARGS.findall(line.split("iter_args(")[-1].split("scf.while (")[-1]):
                taint[variable] = max(taint.get(variable, CLEAN), taint.get(initial, CLEAN))
        match = _DEFINITION.match(line)
        if not match:
            continue
        result, op, rest = match.groups()
        operands = _operands(rest)
        if op == "tt.get_program_id":
            if rest.strip().startswith("z"):
                direction.add(result)
            taint[result] = CLEAN
            continue
        wrapper = op in ("arith.extsi", "arith.extui", "arith.trunci", "tt.splat", "tt.broadcast", "tt.expand_dims")
        if wrapper and operands and operands[0] in direction:
            direction.add(result)
        worst = max((taint.get(v, CLEAN) for v in operands), default=CLEAN)
        if op == "arith.muli" and any(v in direction for v in operands):
            worst = min(worst, SLICE)
        taint[result] = worst
        if op == "tt.addptr":
            offset_type = rest.split(" loc(")[0].rsplit(",", 1)[-1]
            if offset_type.strip().endswith(("i32", "i32>")) and taint.get(operands[1], CLEAN) == SIZED:
                violations.append(line.strip())
    return list(dict.fromkeys(violations))


def _kernels_of_tuning() -> dict:
    """Every raw kernel that ``triton_lstm.tuning`` wraps: {name: (module, attribute)}."""
    kernels = {}
    for attribute in sorted(vars(tuning)):
        value = getattr(tuning, attribute)
        function = getattr(value, "fn", None)
        if attribute.startswith("lstm_") and attribute.endswith("_kernel") and function is not None:
            kernels[attribute] = (function.__module__, function.__name__)
    return kernels


def test_every_kernel_computes_sequence_offsets_in_int64():
    kernels = _kernels_of_tuning()
    assert "lstm_step_forward_kernel" in kernels and "lstm_step_backward_kernel" in kernels
    problems = {}
    for name, ttir in _compile_ttir(kernels).items():
        assert not ttir.startswith("error:"), f"{name}: {ttir}"
        assert "tt.func" in ttir, f"{name}: no TTIR"
        found = wide_offset_violations(ttir)
        if found:
            problems[name] = found
    assert not problems, "i32 offsets from runtime sizes:\n" + "\n".join(
        f"{name}:\n  " + "\n  ".join(lines) for name, lines in problems.items()
    )


@triton.jit
def _narrow_time_offset_kernel(x_ptr, out_ptr, t, stride_t, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(out_ptr + o, tl.load(x_ptr + t * stride_t + o))


@triton.jit
def _wide_time_offset_kernel(x_ptr, out_ptr, t, stride_t, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(out_ptr + o, tl.load(x_ptr + t.to(tl.int64) * stride_t + o))


@triton.jit
def _direction_slice_kernel(x_ptr, out_ptr, batch, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(out_ptr + o, tl.load(x_ptr + tl.program_id(2) * batch * BLOCK + o))


def test_checker_flags_an_int32_time_offset_and_passes_the_int64_one():
    module = __name__
    kernels = {name: (module, name) for name in ("_narrow_time_offset_kernel", "_wide_time_offset_kernel",
                                                 "_direction_slice_kernel")}  # fmt: skip
    ttir = _compile_ttir(kernels)
    narrow = wide_offset_violations(ttir["_narrow_time_offset_kernel"])
    assert len(narrow) == 1 and "tt.addptr" in narrow[0], narrow
    assert wide_offset_violations(ttir["_wide_time_offset_kernel"]) == []
    assert wide_offset_violations(ttir["_direction_slice_kernel"]) == []
