"""Functional LSTM: layers, directions, dropout and variable lengths over the Triton kernels, and the choice of
where to run."""

import torch
import torch.nn.functional as F

from triton_lstm import launch_persistent, launch_stack, ops, tuning

KERNELS = ("auto", "step", "persistent")


def resolve_kernel(kernel: str, device: torch.device, sizes: tuple | None = None) -> str | None:
    """The kernel to run for tensors on ``device``, or None for torch's own LSTM.

    Triton runs CUDA tensors, and CPU tensors when the interpreter is on (TRITON_INTERPRET=1 before import).
    kernel="auto" falls back to torch's LSTM anywhere else; an explicitly named kernel never falls back, and
    raises when it cannot run. ``sizes`` = (hidden, h_out, batch, num_directions, dtype) lets "auto" choose and
    lets "persistent" check that its grid fits the device.
    """
    if not (device.type == "cuda" or (device.type == "cpu" and tuning.INTERPRETED)):
        if kernel == "auto":
            return None
        raise RuntimeError(
            f"triton_lstm: kernel={kernel!r} cannot run on {device.type} tensors: Triton needs CUDA tensors, or "
            "CPU tensors with TRITON_INTERPRET=1 set before triton_lstm is imported. Use kernel='auto' to fall "
            "back to torch's own LSTM."
        )
    if kernel == "step":
        return "step"
    planned = launch_persistent.plan(*sizes, device) if sizes is not None else "sizes unknown"
    if kernel == "persistent":
        if isinstance(planned, str):
            raise RuntimeError(f"triton_lstm: kernel='persistent' cannot run this configuration: {planned}")
        return "persistent"
    # auto. Under the interpreter the persistent kernel only tests its arithmetic (one program per group, no
    # speed to gain), so the per-step kernel runs. On a GPU the persistent kernel wherever its grid fits. Measured on
    # an H200 with the persistent kernels of bench/results/h200-issue4/ (T = 512, B in {1, 16, 64}, H in {256, 768,
    # 1024}, fp16 and fp32): as fast (fp32, B = 64) or up to 30x faster than the per-step kernel in every
    # configuration, forward and forward+backward, the per-step kernel's Python launch cost (50 to 150 us a step)
    # dominating it. The rebuilt persistent kernels (W_hh resident, one barrier a step in the backward, tensor cores)
    # have not been timed yet: each of their changes removes work the measured ones did. float64 was never timed: it
    # keeps the per-step kernel.
    if tuning.INTERPRETED or isinstance(planned, str) or sizes[4] == torch.float64:
        return "step"
    return "persistent"


def _sizes(input, weights, bidirectional, proj_size, batch=None):
    """(hidden, h_out, batch, num_directions, dtype) of a call, for ``resolve_kernel``."""
    hidden = weights[1].shape[0] // 4
    batch = input.shape[1] if batch is None else batch
    return hidden, proj_size or hidden, batch, 2 if bidirectional else 1, input.dtype


class _StackWeights(torch.autograd.Function):
    """torch.stack of per-direction weights that keeps the weights themselves for backward, so that autograd checks
    their versions there: an in-place change between forward and backward raises torch's own error, as it does for
    torch's LSTM (the stacked copy alone would hide it)."""

    @staticmethod
    def forward(ctx, *tensors):
        ctx.save_for_backward(*tensors)
        return torch.stack(tensors)

    @staticmethod
    def backward(ctx, grad):
        ctx.saved_tensors  # noqa: B018 -- reading them is the version check
        return grad.unbind(0)


class _WatchVersions(torch.autograd.Function):
    """Passes a layer's (or stack's) outputs on and keeps the given weights for backward, so that autograd
    checks their versions there. For frozen weight matrices stacked from several tensors: no gradient flows into
    their ``_StackWeights`` node, so its check never runs, yet torch's LSTM, which keeps every weight, raises when one
    is changed in place between forward and backward."""

    @staticmethod
    def forward(ctx, count, *tensors):
        ctx.save_for_backward(*tensors[:count])
        # Copies, not views: a view made here could not be changed in place, and torch's outputs can.
        return tuple(t.clone() for t in tensors[count:])

    @staticmethod
    def backward(ctx, *grads):
        ctx.saved_tensors  # noqa: B018 -- reading them is the version check
        return None, *(None for _ in ctx.saved_tensors), *grads


def _watch_frozen(outputs, weight_lists):
    """``outputs`` through ``_WatchVersions`` when a gradient will flow through them and a weight matrix list of more
    than one tensor has none that requires a gradient; else unchanged."""
    frozen = [w for ws in weight_lists if len(ws) > 1 and ws[0] is not None and ws[0].dim() == 2
              and not any(w.requires_grad for w in ws) for w in ws]  # fmt: skip
    if not frozen or not torch.is_grad_enabled() or not any(t.requires_grad for t in outputs):
        return outputs
    return _WatchVersions.apply(len(frozen), *frozen, *outputs)


def _stack(tensors):
    """Per-direction (or per-layer) weights stacked to (D, ...). One takes a view, not a copy, which autograd's
    version check covers by itself. With more, weight matrices of which one requires a gradient go through
    ``_StackWeights`` (frozen ones are watched by ``_watch_frozen``); biases do not: backward needs no bias values,
    and torch's LSTM does not raise for a bias changed in place either."""
    if tensors[0] is None:
        return None
    if len(tensors) == 1:
        return tensors[0].unsqueeze(0)
    watched = tensors[0].dim() == 2 and any(t.requires_grad for t in tensors)
    return _StackWeights.apply(*tensors) if watched else torch.stack(tensors)


def _layer(x, h0, c0, layer_weights, lengths, kernel):
    """One layer through the ``triton_lstm::layer_forward`` operator; it keeps per-step buffers for backward only
    when a gradient is wanted."""
    per_kind = [[w[k] for w in layer_weights] for k in range(5)]
    w_ih, w_hh, b_ih, b_hh, w_hr = (_stack(ws) for ws in per_kind)
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    )
    output, h_n, c_n, *_ = ops.layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, kernel, save)
    return _watch_frozen((output, h_n, c_n), per_kind)


def _autocast(input, hx, weights):
    """Cast input, state and weights to the dtype torch's own LSTM computes in under autocast (unchanged without).

    CUDA: torch runs the LSTM in cuDNN, whose autocast wrapper casts every floating tensor but float64 to float16,
    whatever the autocast dtype (aten/src/ATen/cudnn/AutocastRNN.cpp). CPU: torch runs the matmuls in the autocast
    dtype and the cell in the input's, so its results come back in promote_types(input dtype, autocast dtype):
    bfloat16 input under bfloat16 autocast stays bfloat16, float32 input stays float32 (with oneDNN disabled; with
    it, this depends on the hardware). Float64 input stays float64 with weights cast to it (torch raises a dtype
    mismatch there).
    """
    device_type = input.device.type
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return input, hx, weights
    if input.dtype == torch.float64:
        dtype = torch.float64
    elif device_type == "cuda":
        dtype = torch.float16
    else:
        dtype = torch.promote_types(input.dtype, torch.get_autocast_dtype(device_type))
    return input.to(dtype), tuple(h.to(dtype) for h in hx), [w.to(dtype) for w in weights]


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


def stacks(kernel: str, sizes: tuple, num_layers: int, device: torch.device) -> bool:
    """Whether the layers run as one stacked persistent launch per pass (``launch_stack``): where the persistent
    kernel was chosen (``resolve_kernel``), with one direction and more than one layer, and both passes' plans fit
    the device (else layer by layer). A stacked launch meets at T + L - 1 barriers a pass, layer by layer L x T: not
    yet timed, it runs wherever it fits, for "auto" as for "persistent"."""
    hidden, h_out, batch, num_directions, dtype = sizes
    if kernel != "persistent" or num_directions != 1 or num_layers < 2:
        return False
    plans = (launch_stack.plan(hidden, h_out, batch, num_layers, dtype, device, backward=b) for b in (False, True))
    return not any(isinstance(plan, str) for plan in plans)


def _dropout_masks(shape: tuple, like: torch.Tensor, p: float, count: int) -> torch.Tensor | None:
    """``count`` dropout scales of ``shape``, drawn as torch's dropout draws them one layer after another (CPU:
    bernoulli_ on a new tensor of the output's shape, divided by 1 - p; p = 1 draws nothing and zeroes), stacked;
    None without dropout."""
    if p == 0:
        return None
    if p == 1:
        return like.new_zeros(count, *shape)
    masks = [like.new_empty(shape).bernoulli_(1 - p).div_(1 - p) for _ in range(count)]
    return torch.stack(masks)


def _stacked_layers(x, hx, weights, lengths, masks, *, num_layers, bias, proj_size):
    """Every layer of a one-direction stack through the ``triton_lstm::stack_forward`` operator (one launch)."""
    layers = [directions[0] for directions in _split_weights(weights, num_layers, 1, bias, proj_size)]
    w_ih, w_hh, b_ih, b_hh, w_hr = ([w[k] for w in layers] for k in range(5))
    stacked = (_stack(w_ih[1:]), _stack(w_hh), _stack(b_ih), _stack(b_hh), _stack(w_hr))
    h0, c0 = hx
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, c0, *w_ih, *stacked))
    output, h_n, c_n, *_ = ops.stack_forward(x, h0, c0, w_ih[0], *stacked, masks, lengths, save)
    return _watch_frozen((output, h_n, c_n), (w_ih[1:], w_hh, w_hr))


def lstm(input, hx, weights, *, num_layers, bias, bidirectional, proj_size, dropout, training, kernel):
    """Run a multi-layer LSTM on a seq-first batched input.

    input: (T, B, I). hx: (h0 (L*D, B, H_out), c0 (L*D, B, H)). weights: the module's flat weights, in
    torch.nn.LSTM's ``_flat_weights`` order. Returns (output (T, B, D*H_out), h_n, c_n) like torch.nn.LSTM.
    Dropout (training only) is applied to the output of every layer but the last, as torch does.
    """
    sizes = _sizes(input, weights, bidirectional, proj_size)
    resolved = resolve_kernel(kernel, input.device, sizes)
    if resolved is None:
        output, h_n, c_n = torch.lstm(input, hx, weights, bias, num_layers, dropout, training, bidirectional, False)
        return output, h_n, c_n
    input, hx, weights = _autocast(input, hx, weights)
    if stacks(resolved, sizes, num_layers, input.device):
        shape = (*input.shape[:2], proj_size or hx[1].shape[-1])
        masks = _dropout_masks(shape, input, dropout if training else 0.0, num_layers - 1)
        return _stacked_layers(input, hx, weights, None, masks, num_layers=num_layers, bias=bias, proj_size=proj_size)

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
    batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
    sizes = _sizes(data, weights, bidirectional, proj_size, batch)
    resolved = resolve_kernel(kernel, data.device, sizes)
    if resolved is None:
        output, h_n, c_n = torch.lstm(data, batch_sizes, hx, weights, bias, num_layers, dropout, training,
                                      bidirectional)  # fmt: skip
        return output, h_n, c_n
    data, hx, weights = _autocast(data, hx, weights)

    batch_sizes = batch_sizes.to(data.device)
    seq_len = batch_sizes.shape[0]
    present = torch.arange(batch, device=data.device)[None, :] < batch_sizes[:, None]  # (T, B)
    rows = present.flatten().nonzero().squeeze(1)  # padded (t, b) position of each packed row, in packed order
    lengths = present.sum(dim=0, dtype=torch.int32)

    def pad(packed):
        padded = packed.new_zeros(seq_len * batch, packed.shape[-1]).index_copy(0, rows, packed)
        return padded.view(seq_len, batch, -1)

    if stacks(resolved, sizes, num_layers, data.device):
        # Drawn for the packed rows, as torch drops out each layer's packed output.
        shape = (data.shape[0], proj_size or hx[1].shape[-1])
        masks = _dropout_masks(shape, data, dropout if training else 0.0, num_layers - 1)
        masks = torch.stack([pad(mask) for mask in masks]) if masks is not None else None
        output, h_n, c_n = _stacked_layers(pad(data), hx, weights, lengths, masks, num_layers=num_layers, bias=bias,
                                           proj_size=proj_size)  # fmt: skip
        return output.flatten(0, 1)[rows], h_n, c_n

    def dropout_between(output):
        if dropout > 0 and training:
            return pad(F.dropout(output.flatten(0, 1)[rows], dropout, training=True))
        return output

    output, h_n, c_n = _layers(pad(data), hx, weights, lengths, dropout_between, kernel=resolved,
                               num_layers=num_layers, bias=bias, bidirectional=bidirectional,
                               proj_size=proj_size)  # fmt: skip
    return output.flatten(0, 1)[rows], h_n, c_n
