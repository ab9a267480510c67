"""Functional LSTM: layers, directions and dropout over the Triton kernels, and the choice of where to run."""

import torch
import torch.nn.functional as F

from triton_lstm import launch, tuning
from triton_lstm.autograd import LSTMLayerFunction

KERNELS = ("auto", "step")


def resolve_kernel(kernel: str, device: torch.device) -> str | None:
    """The kernel to run for tensors on ``device``, or None for torch's own LSTM.

    Triton runs CUDA tensors, and CPU tensors when the interpreter is on (TRITON_INTERPRET=1 before import).
    kernel="auto" falls back to torch's LSTM anywhere else; an explicitly named kernel never falls back.
    """
    if device.type == "cuda" or (device.type == "cpu" and tuning.INTERPRETED):
        return "step"
    if kernel == "auto":
        return None
    raise RuntimeError(
        f"triton_lstm: kernel={kernel!r} cannot run on {device.type} tensors: Triton needs CUDA tensors, or CPU "
        "tensors with TRITON_INTERPRET=1 set before triton_lstm is imported. Use kernel='auto' to fall back to "
        "torch's own LSTM."
    )


def _stack(tensors):
    return None if tensors[0] is None else torch.stack(tensors)


def _layer(x, h0, c0, layer_weights, num_directions):
    """One layer through the autograd Function when a gradient is needed, else straight to the launcher."""
    w_ih, w_hh, b_ih, b_hh, w_hr = (_stack([w[k] for w in layer_weights]) for k in range(5))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    )
    if needs_grad:
        return LSTMLayerFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    bias = b_ih.to(launch.accumulator_dtype(x.dtype)) + b_hh if b_ih is not None else None
    output, h_n, c_n, _ = launch.step_forward(
        x.contiguous(), h0.contiguous(), c0.contiguous(), w_ih, w_hh, bias, w_hr, save=False
    )
    return output, h_n, c_n


def _split_weights(weights, num_layers, num_directions, bias, proj_size):
    """Flat weights in torch's order -> per layer, per direction (w_ih, w_hh, b_ih, b_hh, w_hr), None if absent."""
    per_direction = 2 + 2 * bias + (proj_size > 0)
    groups = []
    for layer in range(num_layers):
        directions = []
        for direction in range(num_directions):
            start = (layer * num_directions + direction) * per_direction
            group = list(weights[start : start + per_direction])
            w_ih, w_hh = group[0], group[1]
            b_ih, b_hh = (group[2], group[3]) if bias else (None, None)
            w_hr = group[-1] if proj_size > 0 else None
            directions.append((w_ih, w_hh, b_ih, b_hh, w_hr))
        groups.append(directions)
    return groups


def lstm(input, hx, weights, *, num_layers, bias, bidirectional, proj_size, dropout, training, kernel):
    """Run a multi-layer LSTM on a seq-first batched input.

    input: (T, B, I). hx: (h0 (L*D, B, H_out), c0 (L*D, B, H)). weights: the module's flat weights, in
    torch.nn.LSTM's ``_flat_weights`` order. Returns (output (T, B, D*H_out), h_n, c_n) like torch.nn.LSTM.
    Dropout (training only) is applied to the output of every layer but the last, as torch does.
    """
    h0, c0 = hx
    if resolve_kernel(kernel, input.device) is None:
        output, h_n, c_n = torch.lstm(input, (h0, c0), weights, bias, num_layers, dropout, training, bidirectional,
                                      False)  # fmt: skip
        return output, h_n, c_n

    num_directions = 2 if bidirectional else 1
    layer_input = input
    h_n, c_n = [], []
    for layer, layer_weights in enumerate(_split_weights(weights, num_layers, num_directions, bias, proj_size)):
        rows = slice(layer * num_directions, (layer + 1) * num_directions)
        output, h, c = _layer(layer_input, h0[rows], c0[rows], layer_weights, num_directions)
        h_n.append(h)
        c_n.append(c)
        if dropout > 0 and training and layer < num_layers - 1:
            output = F.dropout(output, dropout, training=True)
        layer_input = output
    return layer_input, torch.cat(h_n), torch.cat(c_n)
