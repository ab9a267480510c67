"""The launchers of each kernel, and the derivative of the layer operator (``triton_lstm.ops``) over them.

``setup_context`` and ``backward`` are registered on ``triton_lstm::layer_forward`` with
``torch.library.register_autograd``; backward calls the ``triton_lstm::layer_backward`` operator, so that
``torch.compile`` sees both passes as operators. The layer's inputs and outputs are described in ``ops``.
"""

import torch

from triton_lstm import launch, launch_persistent

# Launchers of each kernel, by the name ``functional.resolve_kernel`` gives.
FORWARD_LAUNCHERS = {"step": launch.step_forward, "persistent": launch_persistent.persistent_forward}
BACKWARD_LAUNCHERS = {"step": launch.step_backward, "persistent": launch_persistent.persistent_backward}

DOUBLE_BACKWARD_ERROR = "triton_lstm does not support double backward"


def setup_context(ctx, inputs, output):
    """Keep what backward needs: the layer's tensor inputs and the per-step buffers the forward saved."""
    x, h0, c0, w_ih, w_hh, b_ih, _, w_hr, lengths, kernel, save = inputs
    _, _, _, hs, gates, cs = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, lengths, hs, gates, cs)
    ctx.mark_non_differentiable(hs, gates, cs)
    # Unused outputs get no zero-filled gradient: the saved buffers are as large as the whole sequence.
    ctx.set_materialize_grads(False)
    ctx.has_bias = b_ih is not None
    ctx.kernel = kernel
    ctx.saved_steps = save


def backward(ctx, grad_output, grad_h_n, grad_c_n, *_):
    """Gradients of (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr); b_ih and b_hh share one, as they share one sum."""
    if not ctx.saved_steps:
        raise RuntimeError("triton_lstm: layer_forward ran with save=False, so it has no gradient")
    x, h0, c0, w_ih, w_hh, w_hr, lengths, hs, gates, cs = ctx.saved_tensors
    if grad_output is None:
        grad_output = x.new_zeros(x.shape[0], x.shape[1], h0.shape[0] * h0.shape[2])
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
    grad_c_n = torch.zeros_like(c0) if grad_c_n is None else grad_c_n
    d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, d_w_hr = torch.ops.triton_lstm.layer_backward(
        grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, hs, gates, cs, lengths, ctx.kernel
    )
    # b_ih and b_hh get equal gradients but not one tensor: autograd may adopt a returned gradient as .grad, and two
    # .grad attributes sharing storage would double every later accumulation into either.
    d_b_ih, d_b_hh = (d_bias, d_bias.clone()) if ctx.has_bias else (None, None)
    d_w_hr = d_w_hr if w_hr is not None else None
    return d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh, d_w_hr, None, None, None


def stack_setup_context(ctx, inputs, output):
    """Keep what the stack's backward needs (``ops.stack_forward``), as ``setup_context`` does for a layer."""
    x, h0, c0, w_ih0, w_ih_rest, w_hh, b_ih, _, w_hr, masks, lengths, save = inputs
    _, _, _, hs, gates, cs = output
    ctx.save_for_backward(x, h0, c0, w_ih0, w_ih_rest, w_hh, w_hr, masks, lengths, hs, gates, cs)
    ctx.mark_non_differentiable(hs, gates, cs)
    ctx.set_materialize_grads(False)
    ctx.has_bias = b_ih is not None
    ctx.saved_steps = save


def stack_backward(ctx, grad_output, grad_h_n, grad_c_n, *_):
    """Gradients of (x, h0, c0, w_ih0, w_ih_rest, w_hh, b_ih, b_hh, w_hr) of a stack, as ``backward`` for a layer."""
    if not ctx.saved_steps:
        raise RuntimeError("triton_lstm: stack_forward ran with save=False, so it has no gradient")
    x, h0, c0, w_ih0, w_ih_rest, w_hh, w_hr, masks, lengths, hs, gates, cs = ctx.saved_tensors
    if grad_output is None:
        grad_output = x.new_zeros(x.shape[0], x.shape[1], h0.shape[2])
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
    grad_c_n = torch.zeros_like(c0) if grad_c_n is None else grad_c_n
    d_x, d_h0, d_c0, d_w_ih0, d_w_ih_rest, d_w_hh, d_bias, d_w_hr = torch.ops.triton_lstm.stack_backward(
        grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih0, w_ih_rest, w_hh, w_hr, masks, hs, gates, cs, lengths
    )
    d_b_ih, d_b_hh = (d_bias, d_bias.clone()) if ctx.has_bias else (None, None)
    d_w_hr = d_w_hr if w_hr is not None else None
    return d_x, d_h0, d_c0, d_w_ih0, d_w_ih_rest, d_w_hh, d_b_ih, d_b_hh, d_w_hr, None, None, None


def double_backward(ctx, *grads):
    """Registered on ``layer_backward``: its own derivative is not implemented, so say so instead of being wrong."""
    raise RuntimeError(DOUBLE_BACKWARD_ERROR)
