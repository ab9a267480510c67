"""Functional LSTM: layers, directions, dropout and variable lengths over the Triton kernels, and the choice of
where to run."""

import torch
import torch.nn.functional as F

from triton_lstm import launch, tuning
from triton_lstm.autograd import FORWARD_LAUNCHERS, LSTMLayerFunction

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


def _layer(x, h0, c0, layer_weights, lengths, kernel):
    """One layer through the autograd Function when a gradient is needed, else straight to the launcher."""
    w_ih, w_hh, b_ih, b_hh, w_hr = (_stack([w[k] for w in layer_weights]) for k in range(5))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    )
    if needs_grad:
        return LSTMLayerFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, kernel)
    bias = b_ih.to(launch.accumulator_dtype(x.dtype)) + b_hh if b_ih is not None else None
    output, h_n, c_n, _ = FORWARD_LAUNCHERS[kernel](
        x.contiguous(), h0.contiguous(), c0.contiguous(), w_ih, w_hh, bias, w_hr, lengths, save=False
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


def _layers(x, hx, weights, lengths, dropout_between, *, kernel, num_layers, bias, bidirectional, proj_size):
    num_directions = 2 if bidirectional else 1
    h0, c0 = hx
    layer_input = x
    h_n, c_n = [], []
    for layer, layer_weights in enumerate(_split_weights(weights, num_layers, num_directions, bias, proj_size)):
        rows = slice(layer * num_directions, (layer + 1) * num_directions)
        output, h, c = _layer(layer_input, h0[rows], c0[rows], layer_weights, lengths, kernel)
        h_n.append(h)
        c_n.append(c)
        layer_input = dropout_between(output) if layer < num_layers - 1 else output
    return layer_input, torch.cat(h_n), torch.cat(c_n)


def lstm(input, hx, weights, *, num_layers, bias, bidirectional, proj_size, dropout, training, kernel):
    """Run a multi-layer LSTM on a seq-first batched input.

    input: (T, B, I). hx: (h0 (L*D, B, H_out), c0 (L*D, B, H)). weights: the module's flat weights, in
    torch.nn.LSTM's ``_flat_weights`` order. Returns (output (T, B, D*H_out), h_n, c_n) like torch.nn.LSTM.
    Dropout (training only) is applied to the output of every layer but the last, as torch does.
    """
    resolved = resolve_kernel(kernel, input.device)
    if resolved is None:
        output, h_n, c_n = torch.lstm(input, hx, weights, bias, num_layers, dropout, training, bidirectional, False)
        return output, h_n, c_n

    def dropout_between(output):
        return F.dropout(output, dropout, training=True) if dropout > 0 and training else output

    return _layers(input, hx, weights, None, dropout_between, kernel=resolved, num_layers=num_layers, bias=bias,
                   bidirectional=bidirectional, proj_size=proj_size)  # fmt: skip


def lstm_packed(data, batch_sizes, hx, weights, *, num_layers, bias, bidirectional, proj_size, dropout, training,
                kernel):  # fmt: skip
    """Run a multi-layer LSTM on packed sequences (the form of ``torch.lstm``'s packed overload).

    data: (N, I), the rows of a PackedSequence (time-major, batch sorted by decreasing length); batch_sizes: (T,)
    int64 on the CPU; hx in that sorted batch order. Returns (data (N, D*H_out), h_n, c_n), h_n and c_n taken at
    each sequence's own last step. Inside, the batch is padded to (T, B, I) and the kernels mask each row past its
    length, so nothing is re-packed per step. Dropout acts on the packed rows, as torch's does.
    """
    resolved = resolve_kernel(kernel, data.device)
    if resolved is None:
        output, h_n, c_n = torch.lstm(data, batch_sizes, hx, weights, bias, num_layers, dropout, training,
                                      bidirectional)  # fmt: skip
        return output, h_n, c_n

    batch_sizes = batch_sizes.to(data.device)
    seq_len, batch = batch_sizes.shape[0], int(batch_sizes[0]) if batch_sizes.numel() else 0
    present = torch.arange(batch, device=data.device)[None, :] < batch_sizes[:, None]  # (T, B)
    rows = present.flatten().nonzero().squeeze(1)  # padded (t, b) position of each packed row, in packed order
    lengths = present.sum(dim=0, dtype=torch.int32)

    def pad(packed):
        padded = packed.new_zeros(seq_len * batch, packed.shape[-1]).index_copy(0, rows, packed)
        return padded.view(seq_len, batch, -1)

    def dropout_between(output):
        if dropout > 0 and training:
            return pad(F.dropout(output.flatten(0, 1)[rows], dropout, training=True))
        return output

    output, h_n, c_n = _layers(pad(data), hx, weights, lengths, dropout_between, kernel=resolved,
                               num_layers=num_layers, bias=bias, bidirectional=bidirectional,
                               proj_size=proj_size)  # fmt: skip
    return output.flatten(0, 1)[rows], h_n, c_n
