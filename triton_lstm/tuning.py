"""Autotuning that works both on a GPU and under Triton's interpreter.

On a GPU each kernel is tuned over a config space pruned by the problem size. Under the interpreter
(``TRITON_INTERPRET=1`` before import) autotune cannot benchmark ("0 active drivers") and every extra config
multiplies test time, so each kernel gets one config with large blocks: the interpreter's cost grows with the
number of block operations, not with their size.

Environment: ``TRITON_LSTM_AUTOTUNE=0`` (read at import) runs one default config per kernel without benchmarking;
Triton's own ``TRITON_PRINT_AUTOTUNING=1`` prints the config chosen for each key.
"""

import contextlib
import os
import threading

import triton

from triton_lstm.kernels.persistent_backward import lstm_persistent_backward_kernel
from triton_lstm.kernels.persistent_forward import lstm_persistent_forward_kernel
from triton_lstm.kernels.step_backward import lstm_step_backward_kernel
from triton_lstm.kernels.step_forward import lstm_step_forward_kernel


def _is_interpreted(kernel) -> bool:
    # triton.jit picks the interpreter at decoration time; asking the decorated kernel is the one source of truth
    # on every supported triton version.
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


INTERPRETED = _is_interpreted(lstm_step_forward_kernel)
AUTOTUNE = os.environ.get("TRITON_LSTM_AUTOTUNE", "1") != "0"

# Triton's interpreter keeps per-launch state in globals, so launches from two threads at once corrupt each other.
_INTERPRETER_LOCK = threading.RLock()


def serialized():
    """Context for one launcher call: one thread at a time under the interpreter, no lock on a GPU."""
    return _INTERPRETER_LOCK if INTERPRETED else contextlib.nullcontext()


# Under the interpreter: blocks large enough that test shapes take one or two tiles.
_INTERPRETER_FORWARD = {"BLOCK_B": 16, "BLOCK_H": 64, "BLOCK_K": 64}
_INTERPRETER_BACKWARD = {"BLOCK_B": 16, "BLOCK_N": 64, "BLOCK_U": 64}


def _min_block_b(batch: int) -> int:
    # tl.dot needs every dimension >= 16 on the GPU; past that, a tile taller than the batch only wastes work.
    return max(16, triton.next_power_of_2(batch))


def _space(configs: list[triton.Config], interpreter_config: dict) -> list[triton.Config]:
    if INTERPRETED:
        return [triton.Config(interpreter_config, num_warps=4, num_stages=1)]
    # TRITON_LSTM_AUTOTUNE=0 skips benchmarking: the first config, a safe default, runs for every size.
    return configs if AUTOTUNE else configs[:1]


def _configs(names, rows) -> list[triton.Config]:
    return [
        triton.Config(dict(zip(names, blocks, strict=True)), num_warps=warps, num_stages=2) for *blocks, warps in rows
    ]


# The spaces are lists, not products: `python -m triton_lstm.aot --full --arch 90` compiled the product of batch
# tiles {16, 32, 64}, hidden/column tiles {32, 64}, reduction chunks {16, 32, 64} and warps {4, 8}, and these are
# the configs that compile for sm_90 with no register spills in fp32, fp16 and bf16 (batch tiles of 32 need 8 warps;
# 64 always spills).
def forward_configs() -> list[triton.Config]:
    """Config space of the per-step forward kernel: batch tile, hidden tile, reduction chunk, warps."""
    rows = [(16, h, k, w) for h in (32, 64) for k in (32, 64) for w in (4, 8)]
    rows += [(32, 32, 32, 8), (32, 64, 32, 8), (32, 64, 64, 8)]
    return _space(_configs(("BLOCK_B", "BLOCK_H", "BLOCK_K"), rows), _INTERPRETER_FORWARD)


def backward_configs() -> list[triton.Config]:
    """Config space of the per-step backward kernel: batch tile, output-column tile, hidden-unit chunk, warps."""
    rows = [(16, 32, 16, 4), (16, 32, 16, 8), (32, 32, 16, 8)]
    return _space(_configs(("BLOCK_B", "BLOCK_N", "BLOCK_U"), rows), _INTERPRETER_BACKWARD)


def fits(config: triton.Config, dtype_bits: int, projection: bool = False) -> bool:
    """Whether a step-kernel config compiles without spills for this element size (aot report, sm_80 and sm_90,
    Triton 3.6 and 3.9): float64 tiles are twice as large, and past 16 x 32 they spill on sm_90. The float32
    forward (exact products on FMA units) with 64-wide reduction chunks needs 8 warps and at most 4 outputs per
    thread: Triton 3.9 (no SLP vectorizer on sm_80) spills 476 bytes at 255 registers on sm_80 with 8 outputs a
    thread (16 x 64 with 4 warps, 32 x 64 with 8), and 24 bytes at 80 registers on sm_90 with 16 x 32 and 4 warps.
    The forward's in-kernel projection (``projection``) in float32 and float64 keeps a fifth accumulator and its
    operands live: only 16 x 32 tiles with 32-wide chunks and 4 warps compile without spills on both versions and
    arches (16 x 64 with 4 warps spills 20 bytes at 255 registers on sm_90; with 8 warps ptxas caps registers at 128
    and spills 8 to 424 bytes)."""
    blocks = config.kwargs
    tile = blocks["BLOCK_B"] * max(blocks.get("BLOCK_H", 0), blocks.get("BLOCK_N", 0))
    projected_wide = projection and dtype_bits >= 32 and "BLOCK_K" in blocks
    if projected_wide and (blocks["BLOCK_K"] > 32 or tile > 16 * 32 or config.num_warps > 4):
        return False
    if dtype_bits == 32 and blocks.get("BLOCK_K", 0) >= 64:
        return config.num_warps >= 8 and tile <= 4 * 32 * config.num_warps
    return dtype_bits < 64 or tile <= 16 * 32


def _prune(configs, named_args, **kwargs):
    """Drop configs that spill for this dtype (and projection), and batch tiles taller than the batch needs."""
    limit = _min_block_b(named_args["batch"])
    bits = named_args["w_hh_ptr"].dtype.itemsize * 8
    projection = bool(kwargs.get("HAS_PROJ", False))
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= limit and fits(c, bits, projection)]
    return kept or configs[:1]


def _tuned(kernel, configs, key, prune=None, **kwargs):
    if INTERPRETED:
        return triton.autotune(configs=configs, key=key, **kwargs)(kernel)
    if prune is not None:
        kwargs["prune_configs_by"] = {"early_config_prune": prune}
    # cache_results keeps each key's winner in Triton's on-disk cache, so a new process does not tune again.
    return triton.autotune(configs=configs, key=key, cache_results=True, **kwargs)(kernel)


# Keys are the model sizes and the batch (never the sequence length, which changes per call); tensor dtypes are
# part of every autotune key already.
_SIZES = ["HIDDEN", "H_OUT", "batch"]
# The step kernels' projection path has its own register budget (``fits``), so its own tuned configs.
step_forward_kernel = _tuned(lstm_step_forward_kernel, forward_configs(), [*_SIZES, "HAS_PROJ"], _prune)
# The step backward adds into d_hs in place: benchmarking, which reruns a launch, restores it.
step_backward_kernel = _tuned(
    lstm_step_backward_kernel, backward_configs(), [*_SIZES, "HAS_PROJ"], _prune, restore_value=["d_hs_ptr"]
)
# The persistent kernels take their tiles and warps from the launcher's plan, which sizes them to the device (its SM
# count and shared memory): nothing is left to time per call.
persistent_forward_kernel = lstm_persistent_forward_kernel
persistent_backward_kernel = lstm_persistent_backward_kernel
