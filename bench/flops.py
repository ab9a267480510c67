"""The FLOP and byte model of an LSTM, and the hardware floor it gives.

Per layer and direction, with N real tokens (T * B padded, the sum of the lengths packed), input width I (the
input size for layer 0, D * H_out above it), H_out = P with a projection of size P, else H, and e bytes per
element of the dtype:

- FLOPs, forward: 2 * N * 4H * (I + H_out), plus 2 * N * H * P for the projection. Forward+backward: 3 times that
  (the backward computes two products, a data and a weight gradient, for every forward one).
- Bytes, forward: the recurrent weights (W_hh, and W_hr) read once per step, T * (4H * H_out + P * H) * e, as a
  per-step kernel must; W_ih read once, 4H * I * e; activations: N * (I + 2 * 4H + H_out) * e (x read, the input
  projection written and read back, h written). Forward+backward: twice the forward bytes, plus the gates and cell
  states kept for backward in float32, N * 5H * 4 bytes, written once and read once.

The floor of a run is the larger of FLOPs / matmul peak and bytes / memory bandwidth (both measured on the
machine). A persistent kernel that keeps the weights on chip can beat the byte term, so its fraction of the floor
can exceed 1.
"""

from bench.configs import BenchConfig

MODES = ("forward", "forward_backward")
_STATE_BYTES = 4  # gates and cell states are saved in float32 (float64 for float64)


def _layer_input_sizes(config: BenchConfig) -> list[int]:
    """Input width of every layer, first to last."""
    upper = config.num_directions * config.output_size
    return [config.input_size if layer == 0 else upper for layer in range(config.num_layers)]


def flops(config: BenchConfig, mode: str) -> float:
    """Floating-point operations of one call in ``mode`` ("forward" or "forward_backward")."""
    hidden, out, tokens = config.hidden_size, config.output_size, config.tokens
    total = 0.0
    for width in _layer_input_sizes(config):
        per_direction = 2 * tokens * 4 * hidden * (width + out) + 2 * tokens * hidden * config.proj_size
        total += config.num_directions * per_direction
    return total * (1 if _checked(mode) == "forward" else 3)


def bytes_moved(config: BenchConfig, mode: str) -> float:
    """Bytes one call in ``mode`` must move between memory and the chip, under the per-step model above."""
    hidden, out, tokens, steps = config.hidden_size, config.output_size, config.tokens, config.seq_len
    element = config.torch_dtype.itemsize
    state = max(_STATE_BYTES, element)
    forward_only = _checked(mode) == "forward"
    total = 0.0
    for width in _layer_input_sizes(config):
        recurrent = steps * (4 * hidden * out + config.proj_size * hidden) * element
        input_weights = 4 * hidden * width * element
        activations = tokens * (width + 2 * 4 * hidden + out) * element
        forward = recurrent + input_weights + activations
        per_direction = forward if forward_only else 2 * forward + 2 * tokens * 5 * hidden * state
        total += config.num_directions * per_direction
    return total


def floor_seconds(flop_count: float, byte_count: float, peak_flops: float, bandwidth: float) -> float:
    """The hardware floor: the larger of compute time at the matmul peak and transfer time at full bandwidth."""
    return max(flop_count / peak_flops, byte_count / bandwidth)


def _checked(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode
