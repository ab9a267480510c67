"""Autotuning that works both on a GPU and under Triton's interpreter.

On a GPU each kernel is tuned over a config space pruned by the problem size. Under the interpreter
(``TRITON_INTERPRET=1`` before import) autotune cannot benchmark ("0 active drivers") and every extra config
multiplies test time, so each kernel gets one config with large blocks: the interpreter's cost grows with the
number of block operations, not with their size.
"""

import itertools

import triton

from triton_lstm.kernels.step_backward import lstm_step_backward_kernel
from triton_lstm.kernels.step_forward import lstm_step_forward_kernel


def _is_interpreted(kernel) -> bool:
    # triton.jit picks the interpreter at decoration time; asking the decorated kernel is the one source of truth
    # on every supported triton version.
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


INTERPRETED = _is_interpreted(lstm_step_forward_kernel)

# Under the interpreter: blocks large enough that test shapes take one or two tiles.
_INTERPRETER_FORWARD = {"BLOCK_B": 16, "BLOCK_H": 64, "BLOCK_K": 64}
_INTERPRETER_BACKWARD = {"BLOCK_B": 16, "BLOCK_N": 64, "BLOCK_U": 64}


def _min_block_b(batch: int) -> int:
    # tl.dot needs every dimension >= 16 on the GPU; past that, a tile taller than the batch only wastes work.
    return max(16, triton.next_power_of_2(batch))


def forward_configs() -> list[triton.Config]:
    """Config space of the per-step forward kernel."""
    if INTERPRETED:
        return [triton.Config(_INTERPRETER_FORWARD, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_B": b, "BLOCK_H": h, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for b, h, k, w, s in itertools.product((16, 32, 64), (32, 64), (32, 64), (4, 8), (2, 3))
    ]


def backward_configs() -> list[triton.Config]:
    """Config space of the per-step backward kernel."""
    if INTERPRETED:
        return [triton.Config(_INTERPRETER_BACKWARD, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_B": b, "BLOCK_N": n, "BLOCK_U": u}, num_warps=w, num_stages=s)
        for b, n, u, w, s in itertools.product((16, 32, 64), (32, 64), (32, 64), (4, 8), (2, 3))
    ]


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
