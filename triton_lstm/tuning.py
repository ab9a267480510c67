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


def forward_configs() -> list[triton.Config]:
    """Config space of the per-step forward kernel: batch tile, hidden tile, reduction chunk, warps."""
    return _space(("BLOCK_B", "BLOCK_H", "BLOCK_K"), ((16, 32, 64), (32, 64), (32, 64), (4, 8)), _INTERPRETER_FORWARD)


def backward_configs() -> list[triton.Config]:
    """Config space of the per-step backward kernel: batch tile, output-column tile, hidden-unit chunk, warps."""
    return _space(("BLOCK_B", "BLOCK_N", "BLOCK_U"), ((16, 32, 64), (32, 64), (32, 64), (4, 8)), _INTERPRETER_BACKWARD)


def _prune_by_batch(configs, named_args, **kwargs):
    limit = _min_block_b(named_args["batch"])
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= limit]
    return kept or configs


def _tuned(kernel, configs, key):
    if INTERPRETED:
        return triton.autotune(configs=configs, key=key)(kernel)
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": _prune_by_batch})(kernel)


# Keys are the model sizes and the batch (never the sequence length, which changes per call); tensor dtypes are
# part of every autotune key already.
step_forward_kernel = _tuned(lstm_step_forward_kernel, forward_configs(), key=["HIDDEN", "H_OUT", "batch"])
step_backward_kernel = _tuned(lstm_step_backward_kernel, backward_configs(), key=["HIDDEN", "H_OUT", "batch"])
