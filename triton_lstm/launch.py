"""Host launchers of the per-step kernels: check, allocate, pick the grid, launch once per time step.

Layout conventions for one layer with D directions (D = 2 when bidirectional):
- Stacked weights: w_ih (D, 4H, I), w_hh (D, 4H, H_out), bias (D, 4H) = b_ih + b_hh, w_hr (D, H_out, H).
- Per-step buffers are kept in *step order*: index s holds time s for the forward direction and time T - 1 - s for
  the reverse one, so every step reads and writes one contiguous (D, B, ...) slice for both directions.
- The cell state, saved gates and every gradient buffer use the accumulator dtype: float32, or float64 for float64.
- Variable lengths: ``lengths`` (B,) int32 on the device, or None when every row has T steps. A row's reverse
  direction starts at its own end; h_n and c_n hold each row's state after its own last step.
"""

from dataclasses import dataclass

import torch
import triton

from triton_lstm import tuning


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the cell state and of every sum: float64 stays float64, the rest accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _upcast_dot(dtype: torch.dtype) -> bool:
    # The interpreter's bf16 tl.dot multiplies raw bit patterns; on the GPU bf16 keeps its tensor-core path.
    return tuning.INTERPRETED and dtype == torch.bfloat16


@dataclass
class ForwardSaved:
    """What the backward of one layer needs, all in step order: (T, D, B, ...)."""

    hs: torch.Tensor  # (T, D, B, H_out), input dtype: h_t of every step
    gates: torch.Tensor  # (T, D, B, 4H), accumulator dtype: i, f, g, o after activation
    cs: torch.Tensor  # (T, D, B, H), accumulator dtype: c_t of every step


def _reverse_in_time(seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each row's first len_b steps along dim 0 of seq (T, B, N); steps past a row's length stay put.

    The map is its own inverse, so it converts the reverse direction both ways between time and step order.
    """
    if lengths is None:
        return seq.flip(0)
    steps = torch.arange(seq.shape[0], device=seq.device)[:, None]
    lengths = lengths.long()[None, :]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return seq.gather(0, index[:, :, None].expand_as(seq))


def to_step_order(seq: torch.Tensor, num_directions: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(T, B, D * N) in time order -> (T, D, B, N) in step order (the reverse direction's time reversed)."""
    seq_len, batch, width = seq.shape
    per_direction = seq.view(seq_len, batch, num_directions, width // num_directions).permute(0, 2, 1, 3)
    if num_directions == 1:
        return per_direction
    return torch.stack((per_direction[:, 0], _reverse_in_time(per_direction[:, 1], lengths)), dim=1)


def from_step_order(steps: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(T, D, B, N) in step order -> (T, B, D * N) in time order."""
    seq_len, num_directions, batch, width = steps.shape
    if num_directions == 1:
        return steps.view(seq_len, batch, width)
    return torch.cat((steps[:, 0], _reverse_in_time(steps[:, 1], lengths)), dim=-1)


def _last_steps(lengths: torch.Tensor | None, seq_len: int, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(step, row) index pairs of each row's last step, for gathering h_n and scattering its gradient."""
    rows = torch.arange(batch, device=device)
    last = lengths.long() - 1 if lengths is not None else torch.full_like(rows, seq_len - 1)
    return last, rows


def _forward_meta(config):
    return {} if config is None else dict(config)


def step_forward(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths=None, *, save: bool, config: dict | None = None):
    """Run one layer (all its directions) over the whole sequence, one kernel launch per step.

    x: (T, B, I); h0: (D, B, H_out); c0: (D, B, H); weights stacked as in the module docstring; bias may be None
    and w_hr is None without projection; lengths as in the module docstring. ``config`` replaces autotuning with
    fixed meta-parameters (tests).
    Returns output (T, B, D * H_out), h_n (D, B, H_out), c_n (D, B, H) in x's dtype, and a ForwardSaved when
    ``save`` (else None).
    """
    seq_len, batch, input_size = x.shape
    num_directions, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4
    acc_dtype = accumulator_dtype(x.dtype)
    device = x.device

    x_proj = torch.matmul(x.reshape(seq_len * batch, input_size), w_ih.reshape(num_directions * four_hidden, -1).t())
    x_proj = x_proj.view(seq_len, batch, num_directions * four_hidden)
    w_hh = w_hh.contiguous()
    bias_acc = bias.to(acc_dtype).contiguous() if bias is not None else None
    w_hr_t = w_hr.transpose(1, 2) if w_hr is not None else None

    hs = torch.empty(seq_len, num_directions, batch, h_out, dtype=x.dtype, device=device)
    c_init = c0.to(acc_dtype).contiguous()
    if save:
        cs = torch.empty(seq_len, num_directions, batch, hidden, dtype=acc_dtype, device=device)
        gates = torch.empty(seq_len, num_directions, batch, four_hidden, dtype=acc_dtype, device=device)
    else:
        # Inference keeps only two cell-state slices, alternating; nothing per step is kept.
        cs = torch.empty(2, num_directions, batch, hidden, dtype=acc_dtype, device=device)
        gates = cs[0]  # never written: SAVE_GATES is off
    unprojected = torch.empty(num_directions, batch, hidden, dtype=x.dtype, device=device) if w_hr is not None else None

    meta = _forward_meta(config)
    kernel = tuning.step_forward_kernel if config is None else tuning.lstm_step_forward_kernel
    grid = lambda m: (triton.cdiv(batch, m["BLOCK_B"]), triton.cdiv(hidden, m["BLOCK_H"]), num_directions)  # noqa: E731
    c_prev = c_init
    for step in range(seq_len if batch > 0 else 0):
        h_prev = h0 if step == 0 else hs[step - 1]
        c_out = cs[step] if save else cs[step % 2]
        h_target = unprojected if w_hr is not None else hs[step]
        gates_out = gates[step] if save else gates
        kernel[grid](
            x_proj, bias_acc if bias_acc is not None else c_init, h_prev, c_prev, w_hh, h_target, c_out,
            lengths if lengths is not None else c_init, gates_out,
            step, seq_len, batch,
            x_proj.stride(0), x_proj.stride(1),
            h_prev.stride(0), h_prev.stride(1),
            c_prev.stride(0), c_prev.stride(1),
            h_target.stride(0), h_target.stride(1),
            c_out.stride(0), c_out.stride(1),
            gates_out.stride(0), gates_out.stride(1),
            HIDDEN=hidden, H_OUT=h_out, HAS_BIAS=bias_acc is not None, HAS_LENGTHS=lengths is not None, SAVE_GATES=save,
            UPCAST=_upcast_dot(x.dtype), **meta,
        )  # fmt: skip
        if w_hr is not None:
            torch.bmm(unprojected, w_hr_t, out=hs[step])
        c_prev = c_out

    output = from_step_order(hs, lengths)
    last, rows = _last_steps(lengths, seq_len, batch, device)
    h_n = hs[last, :, rows].transpose(0, 1).contiguous()
    c_n = c_prev.to(x.dtype, copy=True)
    saved = ForwardSaved(hs=hs, gates=gates, cs=cs) if save else None
    return output, h_n, c_n, saved


def step_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, saved: ForwardSaved, lengths=None,
                  *, config: dict | None = None):  # fmt: skip
    """Gradients of one layer: the recurrence runs backwards one kernel launch per step, then the weight
    gradients are GEMMs over all steps at once.

    grad_output: (T, B, D * H_out); grad_h_n: (D, B, H_out); grad_c_n: (D, B, H); the rest as in ``step_forward``.
    Returns (d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, d_w_hr) in the dtypes of what they differentiate, d_bias
    (D, 4H) standing for both b_ih and b_hh, and d_w_hr None without projection.
    """
    seq_len, batch, _ = x.shape
    num_directions, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4
    acc_dtype = accumulator_dtype(x.dtype)
    device = x.device

    # Upstream gradient of every step's h, in step order: the output's, plus h_n's at each row's last step.
    d_out_steps = torch.empty(seq_len, num_directions, batch, h_out, dtype=acc_dtype, device=device)
    d_out_steps.copy_(to_step_order(grad_output, num_directions, lengths))
    last, rows = _last_steps(lengths, seq_len, batch, device)
    d_out_steps[last, :, rows] += grad_h_n.transpose(0, 1).to(acc_dtype)
    w_hh = w_hh.contiguous()
    w_hr_acc = w_hr.to(acc_dtype) if w_hr is not None else None
    d_gates = torch.empty(seq_len, num_directions, batch, four_hidden, dtype=acc_dtype, device=device)
    # dL/dh_t of every step: the weight gradient of the projection needs all of them.
    d_hs = (
        torch.empty(seq_len, num_directions, batch, h_out, dtype=acc_dtype, device=device) if w_hr is not None else None
    )
    d_h_slots = torch.empty(2, num_directions, batch, h_out, dtype=acc_dtype, device=device)
    d_c_slots = torch.empty(2, num_directions, batch, hidden, dtype=acc_dtype, device=device)
    c_init = c0.to(acc_dtype)

    d_h = d_out_steps[-1]
    d_c = grad_c_n.to(acc_dtype).contiguous()
    kernel = tuning.step_backward_kernel if config is None else tuning.lstm_step_backward_kernel
    meta = {} if config is None else dict(config)
    grid = lambda m: (triton.cdiv(batch, m["BLOCK_B"]), triton.cdiv(h_out, m["BLOCK_N"]), num_directions)  # noqa: E731
    for step in range(seq_len - 1 if batch > 0 else -1, -1, -1):
        if w_hr is not None:
            d_hs[step] = d_h
            d_m = torch.bmm(d_h, w_hr_acc)
        else:
            d_m = d_h
        c_prev = c_init if step == 0 else saved.cs[step - 1]
        d_out_prev = d_out_steps[step - 1] if step > 0 else d_m
        d_h_prev = d_h_slots[step % 2]
        d_c_prev = d_c_slots[step % 2]
        kernel[grid](
            d_m, d_c, saved.gates[step], saved.cs[step], c_prev, w_hh, d_out_prev, d_gates[step], d_c_prev, d_h_prev,
            lengths if lengths is not None else d_c, step, batch,
            d_m.stride(0), d_m.stride(1),
            d_c.stride(0), d_c.stride(1),
            saved.gates.stride(1), saved.gates.stride(2),
            saved.cs.stride(1), saved.cs.stride(2),
            c_prev.stride(0), c_prev.stride(1),
            d_out_prev.stride(0), d_out_prev.stride(1),
            d_gates.stride(1), d_gates.stride(2),
            d_c_prev.stride(0), d_c_prev.stride(1),
            d_h_prev.stride(0), d_h_prev.stride(1),
            HIDDEN=hidden, H_OUT=h_out, HAS_D_OUT_PREV=step > 0, HAS_LENGTHS=lengths is not None, **meta,
        )  # fmt: skip
        d_h, d_c = d_h_prev, d_c_prev

    # Weight gradients: one batched GEMM per weight over all T * B rows, per direction.
    rows = seq_len * batch
    h_prev = torch.cat((h0.unsqueeze(0), saved.hs[:-1]), dim=0).to(acc_dtype)  # (T, D, B, H_out)
    d_gates_rows = d_gates.transpose(0, 1).reshape(num_directions, rows, four_hidden)
    d_w_hh = torch.bmm(d_gates_rows.transpose(1, 2), h_prev.transpose(0, 1).reshape(num_directions, rows, h_out))
    d_bias = d_gates_rows.sum(dim=1)

    d_gates_time = from_step_order(d_gates, lengths)  # (T, B, D * 4H) in time order, matching x
    x_rows = x.reshape(rows, -1).to(acc_dtype)
    d_gates_time_rows = d_gates_time.reshape(rows, num_directions, four_hidden).transpose(0, 1)
    d_w_ih = torch.bmm(d_gates_time_rows.transpose(1, 2), x_rows.expand(num_directions, rows, x_rows.shape[1]))
    d_x = torch.matmul(d_gates_time.reshape(rows, -1), w_ih.reshape(num_directions * four_hidden, -1).to(acc_dtype))

    d_w_hr = None
    if w_hr is not None:
        # h_t = W_hr m_t with m_t = o_t * tanh(c_t), recomputed from the saved gates and cell states.
        unprojected = saved.gates[..., 3 * hidden :] * torch.tanh(saved.cs)
        d_w_hr = torch.bmm(
            d_hs.transpose(0, 1).reshape(num_directions, rows, h_out).transpose(1, 2),
            unprojected.transpose(0, 1).reshape(num_directions, rows, hidden),
        ).to(w_hr.dtype)

    return (
        d_x.view(seq_len, batch, -1).to(x.dtype),
        d_h.to(h0.dtype),
        d_c.to(c0.dtype),
        d_w_ih.to(w_ih.dtype),
        d_w_hh.to(w_hh.dtype),
        d_bias,
        d_w_hr,
    )
