"""Autotuning that works both on a GPU and under Triton's interpreter.

On a GPU each kernel is tuned over a config space pruned by the problem size. Under the interpreter
(``TRITON_INTERPRET=1`` before import) autotune cannot benchmark ("0 active drivers") and every extra config
multiplies test time, so each kernel gets one config with large blocks: the interpreter's cost grows with the
number of block operations, not with their size.

Environment: ``TRITON_LSTM_AUTOTUNE=0`` (read at import) runs one default config per kernel without benchmarking.
"""

import itertools
import os

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

# Under the interpreter: blocks large enough that test shapes take one or two tiles.
_INTERPRETER_FORWARD = {"BLOCK_B": 16, "BLOCK_H": 64, "BLOCK_K": 64}
_INTERPRETER_BACKWARD = {"BLOCK_B": 16, "BLOCK_N": 64, "BLOCK_U": 64}


def _min_block_b(batch: int) -> int:
    # tl.dot needs every dimension >= 16 on the GPU; past that, a tile taller than the batch only wastes work.
    return max(16, triton.next_power_of_2(batch))


def _space(names, values, interpreter_config):
    if INTERPRETED:
        return [triton.Config(interpreter_config, num_warps=4, num_stages=1)]
    configs = [
        triton.Config(dict(zip(names, blocks, strict=True)), num_warps=warps, num_stages=2)
        for *blocks, warps in itertools.product(*values)
    ]
    # TRITON_LSTM_AUTOTUNE=0 skips benchmarking: the first config, a safe default, runs for every size.
    return configs if AUTOTUNE else configs[:1]


# Batch tiles stop at 32: at 64 every step kernel spills registers on sm_90 (python -m triton_lstm.aot --full).
def forward_configs() -> list[triton.Config]:
    """Config space of the per-step forward kernel: batch tile, hidden tile, reduction chunk, warps."""
    return _space(("BLOCK_B", "BLOCK_H", "BLOCK_K"), ((16, 32), (32, 64), (32, 64), (4, 8)), _INTERPRETER_FORWARD)


def backward_configs() -> list[triton.Config]:
    """Config space of the per-step backward kernel: batch tile, output-column tile, hidden-unit chunk, warps."""
    return _space(("BLOCK_B", "BLOCK_N", "BLOCK_U"), ((16, 32), (32,), (16,), (4, 8)), _INTERPRETER_BACKWARD)


def _persistent_space(warps: int) -> list[triton.Config]:
    # The persistent kernels' tiles come from the launcher's plan, which sizes the grid to what the device holds at
    # once, so only warps are left. One stage: pipelining the time loop's loads would multiply the shared memory
    # that the on-chip weights already fill (TRITON_ON_CPU.md).
    return [triton.Config({}, num_warps=4 if INTERPRETED else warps, num_stages=1)]


def persistent_forward_configs() -> list[triton.Config]:
    """8 warps: with 4 the hoisted W_hh tiles spill at H = 256 in fp16 (aot report)."""
    return _persistent_space(8)


def persistent_backward_configs() -> list[triton.Config]:
    """4 warps: with 8 the streamed fp32 tiles spill at H = 1024 (aot report)."""
    return _persistent_space(4)


def fits(config: triton.Config, dtype_bits: int) -> bool:
    """Whether a step-kernel config compiles without spills for this element size: float64 tiles are twice as
    large, and past 16 x 32 they spill on sm_90 (aot report)."""
    blocks = config.kwargs
    return dtype_bits < 64 or blocks["BLOCK_B"] * max(blocks.get("BLOCK_H", 0), blocks.get("BLOCK_N", 0)) <= 16 * 32


def _prune(configs, named_args, **kwargs):
    """Drop configs that spill for this dtype, and batch tiles taller than the batch needs."""
    limit = _min_block_b(named_args["batch"])
    bits = named_args["w_hh_ptr"].dtype.itemsize * 8
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= limit and fits(c, bits)]
    return kept or configs[:1]


def _tuned(kernel, configs, key, prune=None, **kwargs):
    if INTERPRETED or prune is None:
        return triton.autotune(configs=configs, key=key, **kwargs)(kernel)
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune}, **kwargs)(kernel)


# Keys are the model sizes and the batch (never the sequence length, which changes per call); tensor dtypes are
# part of every autotune key already.
_SIZES = ["HIDDEN", "H_OUT", "batch"]
step_forward_kernel = _tuned(lstm_step_forward_kernel, forward_configs(), _SIZES, _prune)
step_backward_kernel = _tuned(lstm_step_backward_kernel, backward_configs(), _SIZES, _prune)
# Benchmarking reruns a launch: the barrier counters restart from zero, and the backward's in-place buffers
# (upstream gradients accumulated into, the alternating cell-gradient slots) are restored.
persistent_forward_kernel = _tuned(
    lstm_persistent_forward_kernel, persistent_forward_configs(), _SIZES, reset_to_zero=["sync_ptr"]
)
persistent_backward_kernel = _tuned(
    lstm_persistent_backward_kernel,
    persistent_backward_configs(),
    _SIZES,
    reset_to_zero=["sync_ptr"],
    restore_value=["d_hs_ptr", "d_cs_ptr"],
)
