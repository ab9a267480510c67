"""``torch.autograd.Function`` of one LSTM layer (all its directions), over the Triton kernels."""

import torch
from torch.autograd.function import once_differentiable

from triton_lstm import launch

# Launchers of each kernel, by the name the module's ``kernel`` argument resolves to.
FORWARD_LAUNCHERS = {"step": launch.step_forward}
BACKWARD_LAUNCHERS = {"step": launch.step_backward}


class LSTMLayerFunction(torch.autograd.Function):
    """One layer: inputs are the layer input and the weights stacked over directions (see ``launch``).

    forward(x (T, B, I), h0 (D, B, H_out), c0 (D, B, H), w_ih (D, 4H, I), w_hh (D, 4H, H_out),
            b_ih (D, 4H) | None, b_hh (D, 4H) | None, w_hr (D, H_out, H) | None, lengths (B,) int32 | None,
            kernel: a key of FORWARD_LAUNCHERS)
      -> output (T, B, D * H_out), h_n (D, B, H_out), c_n (D, B, H)
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, kernel):
        x, h0, c0 = x.contiguous(), h0.contiguous(), c0.contiguous()
        bias = b_ih.to(launch.accumulator_dtype(x.dtype)) + b_hh if b_ih is not None else None
        output, h_n, c_n, saved = FORWARD_LAUNCHERS[kernel](x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, save=True)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, lengths, saved.hs, saved.gates, saved.cs)
        ctx.has_bias = b_ih is not None
        ctx.kernel = kernel
        return output, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_h_n, grad_c_n):
        x, h0, c0, w_ih, w_hh, w_hr, lengths, hs, gates, cs = ctx.saved_tensors
        saved = launch.ForwardSaved(hs=hs, gates=gates, cs=cs)
        d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, d_w_hr = BACKWARD_LAUNCHERS[ctx.kernel](
            grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, saved, lengths
        )
        d_b = d_bias.to(w_hh.dtype) if ctx.has_bias else None
        d_w_hr = d_w_hr.to(w_hr.dtype) if w_hr is not None else None
        return (d_x.to(x.dtype), d_h0.to(h0.dtype), d_c0.to(c0.dtype), d_w_ih.to(w_ih.dtype), d_w_hh.to(w_hh.dtype),
                d_b, d_b, d_w_hr, None, None)  # fmt: skip
