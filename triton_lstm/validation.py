"""Argument checks for ``triton_lstm.LSTM``: torch.nn.LSTM's checks, in its order, with its messages.

torch.nn.LSTM checks some arguments in Python and the rest inside its ATen op. The kernels here would fail
on bad arguments in other ways, or not at all, so every check runs here, before any computation, in the
order torch reaches them; the exception types and messages are torch's. Where torch has no check of its own
(hx dtype, weights of mixed dtypes) a RuntimeError says what is wrong instead of a backend error.
"""

import torch

from triton_lstm.functional import KERNELS


def check_kernel(kernel):
    """Raise ValueError unless ``kernel`` names one of ``triton_lstm.functional.KERNELS``."""
    if kernel not in KERNELS:
        choices = ", ".join(repr(name) for name in KERNELS)
        raise ValueError(f"kernel must be one of {choices}; got {kernel!r}")


def check_forward_args(
    input,
    hx,
    weights,
    *,
    input_size,
    hidden_size,
    num_layers,
    bidirectional,
    proj_size,
    batch_first,
    dropout,
    training,
    kernel,
    batch_sizes=None,
):
    """Check the arguments of ``LSTM.forward`` exactly as torch.nn.LSTM would, before anything runs.

    input: (T, B, I), (B, T, I) when ``batch_first``, or (T, I) unbatched; or the (N, I) data of a
    PackedSequence, whose ``batch_sizes`` is then given. hx: None or a pair (h_0 (L*D, B, H_out),
    c_0 (L*D, B, H)), without the B dimension for unbatched input. weights: the module's ``_flat_weights``.
    Nothing is modified. Packed input gets the same checks as dense input (torch 2.13 skips most of them).
    """
    packed = batch_sizes is not None
    if not packed and input.dim() not in (2, 3):
        raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
    batched = packed or input.dim() == 3
    if hx is not None:
        _check_hidden_rank(hx, batched)
        # For unbatched input torch rebuilds hx as a new pair, so its op never sees the caller's container.
        if not batched:
            hx = (hx[0], hx[1])

    autocast = torch._C._is_any_autocast_enabled()
    # Under autocast the op casts its inputs itself, so torch skips the dtype checks.
    if not autocast and input.dtype != weights[0].dtype:
        raise ValueError(
            f"RNN input dtype ({input.dtype}) does not match weight dtype ({weights[0].dtype}). "
            f"Convert input: input.to({weights[0].dtype}), or convert model: model.to({input.dtype})"
        )
    if input.size(-1) != input_size:
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {input_size}, got {input.size(-1)}")

    if hx is not None:
        if packed:
            mini_batch = int(batch_sizes[0])
        else:
            mini_batch = (input.size(0) if batch_first else input.size(1)) if batched else 1
        rows = num_layers * (2 if bidirectional else 1)
        expected = ((rows, mini_batch, proj_size or hidden_size), (rows, mini_batch, hidden_size))
        for index, (state, shape) in enumerate(zip(hx[:2], expected, strict=True)):
            # torch reports an unbatched state with its batch dimension of 1 inserted.
            got = list(state.shape) if batched else [state.size(0), 1, *state.shape[1:]]
            if tuple(got) != shape:
                raise RuntimeError(f"Expected hidden[{index}] size {shape}, got {got}")

    _check_op_args(input, hx, weights, autocast)

    seq_dim = 1 if batched and batch_first and not packed else 0
    if input.size(seq_dim) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    # Dropout runs, and so checks its probability, only between layers and only in training.
    if training and num_layers > 1 and not 0 <= dropout <= 1:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {dropout:g}")
    check_kernel(kernel)


def _check_hidden_rank(hx, batched):
    """Raise torch's RuntimeError when h_0 or c_0 does not have the rank the input implies."""
    rank = 3 if batched else 2
    if hx[0].dim() != rank or hx[1].dim() != rank:
        kind = "batched 3-D" if batched else "unbatched 2-D"
        raise RuntimeError(
            f"For {kind} input, hx and cx should also be {rank}-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
        )


def _check_op_args(input, hx, weights, autocast):
    """The checks torch's ATen op makes on its arguments: types, count, devices, then dtypes."""
    if hx is not None and not isinstance(hx, (tuple, list)):
        raise TypeError(
            "lstm() received an invalid combination of arguments: hx must be a tuple or list "
            f"(h_0, c_0), got {type(hx).__name__}"
        )
    for index, weight in enumerate(weights):
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"expected Tensor as element {index} in argument 2, but got {type(weight).__name__}")
    if hx is not None and len(hx) != 2:
        raise RuntimeError("lstm expects two hidden states")

    groups = (("hidden", hx or ()), ("parameter", weights))
    for name, tensors in groups:
        for tensor in tensors:
            if tensor.device != input.device:
                raise RuntimeError(
                    f"Input and {name} tensors are not at the same device, found input tensor at "
                    f"{input.device} and {name} tensor at {tensor.device}"
                )
    if autocast:
        return
    for state in hx or ():
        if state.dtype != input.dtype:
            raise RuntimeError(
                "Input and hidden tensors are not the same dtype, found input tensor with "
                f"{input.dtype} and hidden tensor with {state.dtype}"
            )
    for weight in weights:
        if weight.dtype != weights[0].dtype:
            raise RuntimeError(
                f"All LSTM weights must have the same dtype, found {weights[0].dtype} and {weight.dtype}"
            )
