"""A plain PyTorch LSTM loop, differentiable and exact in any dtype (float64 for references).

It follows torch.nn.LSTM's definition step by step; the kernel tests and the float64 tolerance rule compare
against it. Dropout between layers is applied from given masks (drawn elsewhere).
"""

import torch


def reference_lstm(x, hx, weights, *, num_layers, bias, bidirectional, proj_size, dtype=torch.float64,
                   dropout_masks=None):  # fmt: skip
    """x: (T, B, I) seq-first; hx: (h0 (L*D, B, H_out), c0 (L*D, B, H)); weights: torch's flat-weight order;
    dropout_masks: (L - 1, T, B, D*H_out) scales of each layer's output but the last, or None.

    Every tensor is converted to ``dtype`` first. Returns output (T, B, D*H_out), h_n, c_n in ``dtype``.
    """
    num_directions = 2 if bidirectional else 1
    per_direction = 2 + 2 * bias + (proj_size > 0)
    weights = [w.to(dtype) for w in weights]
    h0, c0 = (t.to(dtype) for t in hx)
    layer_input = x.to(dtype)
    h_n, c_n = [], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(num_directions):
            index = layer * num_directions + direction
            group = weights[index * per_direction : (index + 1) * per_direction]
            w_ih, w_hh = group[0], group[1]
            b = group[2] + group[3] if bias else 0.0
            w_hr = group[-1] if proj_size > 0 else None
            h, c = h0[index], c0[index]
            times = range(layer_input.shape[0])
            steps = []
            for t in reversed(times) if direction == 1 else times:
                gates = layer_input[t] @ w_ih.t() + h @ w_hh.t() + b
                i, f, g, o = gates.chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                if w_hr is not None:
                    h = h @ w_hr.t()
                steps.append(h)
            if direction == 1:
                steps.reverse()
            outputs.append(torch.stack(steps))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=-1)
        if dropout_masks is not None and layer < num_layers - 1:
            layer_input = layer_input * dropout_masks[layer].to(dtype)
    return layer_input, torch.stack(h_n), torch.stack(c_n)


def reference_lstm_varlen(x, hx, weights, lengths, **kwargs):
    """``reference_lstm`` with per-row lengths: row b sees only x[:lengths[b], b] (its reverse direction starts at
    its own end). Output positions past a row's length are zero; h_n and c_n come from each row's last step."""
    outputs, h_n, c_n = [], [], []
    h0, c0 = hx
    masks = kwargs.pop("dropout_masks", None)
    for row, length in enumerate(int(n) for n in lengths):
        rows = slice(row, row + 1)
        row_masks = masks[:, :length, rows] if masks is not None else None
        output, h, c = reference_lstm(x[:length, rows], (h0[:, rows], c0[:, rows]), weights, dropout_masks=row_masks,
                                      **kwargs)  # fmt: skip
        padding = output.new_zeros(x.shape[0] - length, 1, output.shape[-1])
        outputs.append(torch.cat((output, padding)))
        h_n.append(h)
        c_n.append(c)
    return torch.cat(outputs, dim=1), torch.cat(h_n, dim=1), torch.cat(c_n, dim=1)
