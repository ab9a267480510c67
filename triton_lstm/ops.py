"""One LSTM layer as PyTorch custom operators, so that ``torch.compile`` traces through it without a graph break.

``triton_lstm::layer_forward`` and ``triton_lstm::layer_backward`` run the kernel named by ``kernel`` (a key of
``autograd.FORWARD_LAUNCHERS``); their fake implementations give every output's shape, dtype and device without
running anything; ``autograd`` holds the derivative. Shapes, for one layer with D directions (as in ``launch``):

layer_forward(x (T, B, I), h0 (D, B, H_out), c0 (D, B, H), w_ih (D, 4H, I), w_hh (D, 4H, H_out),
              b_ih (D, 4H)?, b_hh (D, 4H)?, w_hr (D, H_out, H)?, lengths (B,) int32?, kernel, save)
  -> output (T, B, D * H_out), h_n (D, B, H_out), c_n (D, B, H), all in x's dtype, then the buffers backward
     reads: hs (T + 1, D, B, H_out) in x's dtype, gates (T, D, B, 4H) and cs (T + 1, D, B, H) in the
     accumulator dtype; with save=False (no gradient wanted) nothing is kept per step and the three are empty.

layer_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr?, hs, gates, cs, lengths?, kernel)
  -> d_x, d_h0, d_c0, d_w_ih, d_w_hh in their inputs' dtypes, d_bias (D, 4H) in w_hh's dtype (the gradient of
     both biases), d_w_hr in w_hr's dtype (empty without projection).

``triton_lstm::stack_forward`` and ``triton_lstm::stack_backward`` run every layer of a one-direction stack in one
persistent launch per pass (``launch_stack``); L layers, layer 0's input weights apart from the others':

stack_forward(x (T, B, I), h0 (L, B, H_out), c0 (L, B, H), w_ih0 (4H, I), w_ih_rest (L - 1, 4H, H_out),
              w_hh (L, 4H, H_out), b_ih (L, 4H)?, b_hh (L, 4H)?, w_hr (L, H_out, H)?, masks (L - 1, T, B, H_out)?,
              lengths?, save)
  -> output (T, B, H_out) of the last layer, h_n, c_n, and hs, gates, cs as above with L in the directions' place.

stack_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih0, w_ih_rest, w_hh, w_hr?, masks?, hs, gates, cs,
               lengths?)
  -> d_x, d_h0, d_c0, d_w_ih0, d_w_ih_rest, d_w_hh, d_bias (L, 4H), d_w_hr (empty without projection).
"""

import torch
from torch import Tensor

from triton_lstm import autograd, launch, launch_stack, tuning

_Outputs = tuple[Tensor, ...]


def _fresh(outputs: _Outputs, inputs: tuple) -> _Outputs:
    """Clone every output that shares memory with an input or an earlier output, and make every output
    contiguous, as the fake implementations promise.

    A custom operator's outputs may not alias its inputs or each other, but a launcher may return views of one
    buffer (with one direction, the output is a view of hs).
    """
    taken = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, Tensor) and t.numel()}
    fresh = []
    for t in outputs:
        if not t.numel():
            fresh.append(torch.empty_like(t, memory_format=torch.contiguous_format))
            continue
        shared = t.untyped_storage().data_ptr() in taken
        t = t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous()
        taken.add(t.untyped_storage().data_ptr())
        fresh.append(t)
    return tuple(fresh)


@torch.library.custom_op("triton_lstm::layer_forward", mutates_args=())
def layer_forward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    kernel: str,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
    # Callers cast for autocast before the operator (as torch's LSTM does); inside, every dtype is the kernels'.
    with torch.autocast(x.device.type, enabled=False), tuning.serialized():
        bias = b_ih.to(launch.accumulator_dtype(x.dtype)) + b_hh if b_ih is not None else None
        output, h_n, c_n, saved = autograd.FORWARD_LAUNCHERS[kernel](
            x.contiguous(), h0.contiguous(), c0.contiguous(), w_ih, w_hh, bias, w_hr, lengths, save=save
        )
    buffers = (saved.hs, saved.gates, saved.cs) if save else (x.new_empty(0),) * 3
    return _fresh((output, h_n, c_n, *buffers), inputs)


@layer_forward.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, kernel, save):
    seq_len, batch, _ = x.shape
    num_directions, _, h_out = h0.shape
    hidden = c0.shape[2]
    hs, gates, cs = _saved_buffers(x, seq_len, num_directions, batch, h_out, hidden, save)
    output = x.new_empty(seq_len, batch, num_directions * h_out)
    return output, h0.new_empty(h0.shape, dtype=x.dtype), c0.new_empty(c0.shape, dtype=x.dtype), hs, gates, cs


@torch.library.custom_op("triton_lstm::layer_backward", mutates_args=())
def layer_backward(
    grad_output: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    hs: Tensor,
    gates: Tensor,
    cs: Tensor,
    lengths: Tensor | None,
    kernel: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    inputs = (grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, hs, gates, cs, lengths)
    with torch.autocast(x.device.type, enabled=False), tuning.serialized():
        saved = launch.ForwardSaved(hs=hs, gates=gates, cs=cs)
        d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, d_w_hr = autograd.BACKWARD_LAUNCHERS[kernel](
            grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, saved, lengths
        )
    d_w_hr = d_w_hr.to(w_hr.dtype) if w_hr is not None else x.new_empty(0)
    grads = (d_x.to(x.dtype), d_h0.to(h0.dtype), d_c0.to(c0.dtype), d_w_ih.to(w_ih.dtype), d_w_hh.to(w_hh.dtype),
             d_bias.to(w_hh.dtype), d_w_hr)  # fmt: skip
    return _fresh(grads, inputs)


@layer_backward.register_fake
def _(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, hs, gates, cs, lengths, kernel):
    num_directions, four_hidden, _ = w_hh.shape
    d_w_hr = w_hr.new_empty(w_hr.shape) if w_hr is not None else x.new_empty(0)
    return (x.new_empty(x.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), w_hh.new_empty(num_directions, four_hidden), d_w_hr)  # fmt: skip


def _saved_buffers(x, seq_len: int, groups: int, batch: int, h_out: int, hidden: int, save: bool):
    """hs, gates, cs as the forward keeps them for backward, or three empty tensors without save."""
    if not save:
        return x.new_empty(0), x.new_empty(0), x.new_empty(0)
    acc_dtype = launch.accumulator_dtype(x.dtype)
    return (x.new_empty(seq_len + 1, groups, batch, h_out),
            x.new_empty(seq_len, groups, batch, 4 * hidden, dtype=acc_dtype),
            x.new_empty(seq_len + 1, groups, batch, hidden, dtype=acc_dtype))  # fmt: skip


@torch.library.custom_op("triton_lstm::stack_forward", mutates_args=())
def stack_forward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih0: Tensor,
    w_ih_rest: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    masks: Tensor | None,
    lengths: Tensor | None,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    inputs = (x, h0, c0, w_ih0, w_ih_rest, w_hh, b_ih, b_hh, w_hr, masks, lengths)
    with torch.autocast(x.device.type, enabled=False), tuning.serialized():
        bias = b_ih.to(launch.accumulator_dtype(x.dtype)) + b_hh if b_ih is not None else None
        output, h_n, c_n, saved = launch_stack.stack_forward(
            x.contiguous(),
            h0.contiguous(),
            c0.contiguous(),
            w_ih0,
            w_ih_rest,
            w_hh,
            bias,
            w_hr,
            masks,
            lengths,
            save=save,
        )
    buffers = (saved.hs, saved.gates, saved.cs) if save else (x.new_empty(0),) * 3
    return _fresh((output, h_n, c_n, *buffers), inputs)


@stack_forward.register_fake
def _(x, h0, c0, w_ih0, w_ih_rest, w_hh, b_ih, b_hh, w_hr, masks, lengths, save):
    seq_len, batch, _ = x.shape
    num_layers, _, h_out = h0.shape
    hidden = c0.shape[2]
    buffers = _saved_buffers(x, seq_len, num_layers, batch, h_out, hidden, save)
    output = x.new_empty(seq_len, batch, h_out)
    return output, h0.new_empty(h0.shape, dtype=x.dtype), c0.new_empty(c0.shape, dtype=x.dtype), *buffers


@torch.library.custom_op("triton_lstm::stack_backward", mutates_args=())
def stack_backward(
    grad_output: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih0: Tensor,
    w_ih_rest: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    masks: Tensor | None,
    hs: Tensor,
    gates: Tensor,
    cs: Tensor,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    inputs = (grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih0, w_ih_rest, w_hh, w_hr, masks, hs, gates, cs, lengths)
    with torch.autocast(x.device.type, enabled=False), tuning.serialized():
        saved = launch.ForwardSaved(hs=hs, gates=gates, cs=cs)
        grads = launch_stack.stack_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih0, w_ih_rest, w_hh, w_hr,
                                            masks, saved, lengths)  # fmt: skip
    d_x, d_h0, d_c0, d_w_ih0, d_w_ih_rest, d_w_hh, d_bias, d_w_hr = grads
    d_w_hr = d_w_hr.to(w_hr.dtype) if w_hr is not None else x.new_empty(0)
    grads = (d_x.to(x.dtype), d_h0.to(h0.dtype), d_c0.to(c0.dtype), d_w_ih0.to(w_ih0.dtype),
             d_w_ih_rest.to(w_ih_rest.dtype), d_w_hh.to(w_hh.dtype), d_bias.to(w_hh.dtype), d_w_hr)  # fmt: skip
    return _fresh(grads, inputs)


@stack_backward.register_fake
def _(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih0, w_ih_rest, w_hh, w_hr, masks, hs, gates, cs, lengths):
    num_layers, four_hidden, _ = w_hh.shape
    d_w_hr = w_hr.new_empty(w_hr.shape) if w_hr is not None else x.new_empty(0)
    return (x.new_empty(x.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape), w_ih0.new_empty(w_ih0.shape),
            w_ih_rest.new_empty(w_ih_rest.shape), w_hh.new_empty(w_hh.shape), w_hh.new_empty(num_layers, four_hidden),
            d_w_hr)  # fmt: skip


layer_forward.register_autograd(autograd.backward, setup_context=autograd.setup_context)
layer_backward.register_autograd(autograd.double_backward)
stack_forward.register_autograd(autograd.stack_backward, setup_context=autograd.stack_setup_context)
stack_backward.register_autograd(autograd.double_backward)
