"""Forward kernel of one LSTM time step, for every direction of a layer at once.

For each direction d and each (batch tile, hidden tile) program:
    gates = x_proj[t_d] + bias + h_prev @ W_hh^T        (all four gates of the tile's hidden units)
    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid
    c = f * c_prev + i * g,   h = o * tanh(c)
where t_d = step for the forward direction and T - 1 - step for the reverse one. Gate rows of W_hh are ordered
i, f, g, o (torch's layout), so hidden unit j reads rows j, H + j, 2H + j and 3H + j.

Variable lengths (HAS_LENGTHS): row b runs steps 0 .. len_b - 1 only, its reverse direction starting at its own
end (t = len_b - 1 - step). At later steps the row keeps its cell state, so the last slice holds each row's
final c, and stores zero gates, so that nothing computed from the saved steps of a finished row is garbage.
"""

import triton
import triton.language as tl

from triton_lstm.kernels.math import cell_forward, dot_acc, zero_unless


@triton.jit(do_not_specialize=["step", "seq_len"])
def lstm_step_forward_kernel(
    x_proj_ptr,  # (T, B, D * 4H): x @ W_ih^T of every step, both directions side by side
    bias_ptr,  # (D, 4H) in the accumulator dtype: b_ih + b_hh (unused without HAS_BIAS)
    h_prev_ptr,  # (D, B, H_OUT)
    c_prev_ptr,  # (D, B, H) in the accumulator dtype
    w_hh_ptr,  # (D, 4H, H_OUT), contiguous
    h_out_ptr,  # (D, B, H): h, or o * tanh(c) before the projection when the layer projects
    c_out_ptr,  # (D, B, H) in the accumulator dtype
    lengths_ptr,  # (B,) int32: each row's length (only if HAS_LENGTHS)
    gates_out_ptr,  # (D, B, 4H) in the accumulator dtype: i, f, g, o after activation (only if SAVE_GATES)
    step,
    seq_len,
    batch,
    stride_xp_t,
    stride_xp_b,
    stride_hp_d,
    stride_hp_b,
    stride_cp_d,
    stride_cp_b,
    stride_ho_d,
    stride_ho_b,
    stride_co_d,
    stride_co_b,
    stride_go_d,
    stride_go_b,
    HIDDEN: tl.constexpr,
    H_OUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    SAVE_GATES: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    i_b = tl.program_id(0)
    i_h = tl.program_id(1)
    i_d = tl.program_id(2)
    acc_dtype = c_out_ptr.dtype.element_ty

    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    o_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)
    m_b = o_b < batch
    m_h = o_h < HIDDEN
    m_bh = m_b[:, None] & m_h[None, :]
    o_b64 = o_b.to(tl.int64)
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + o_b, mask=m_b, other=0)
        active = (step < length)[:, None]
        t = tl.where(i_d == 0, step, length - 1 - step)[:, None]
    else:
        active = True
        t = step + i_d * (seq_len - 1 - 2 * step)
    m_xp = m_bh & active

    acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    p_h_rows = h_prev_ptr + i_d * stride_hp_d + o_b64[:, None] * stride_hp_b
    # W_hh^T tile of gate q: element (k, j) is W_hh[d, q * H + j, k].
    p_w = w_hh_ptr + i_d.to(tl.int64) * (4 * HIDDEN * H_OUT) + o_h[None, :] * H_OUT
    for k0 in range(0, H_OUT, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < H_OUT
        b_h = tl.load(p_h_rows + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
        m_kh = m_k[:, None] & m_h[None, :]
        p_wk = p_w + o_k[:, None]
        acc_i = dot_acc(b_h, tl.load(p_wk, mask=m_kh, other=0.0), acc_i, UPCAST)
        acc_f = dot_acc(b_h, tl.load(p_wk + HIDDEN * H_OUT, mask=m_kh, other=0.0), acc_f, UPCAST)
        acc_g = dot_acc(b_h, tl.load(p_wk + 2 * HIDDEN * H_OUT, mask=m_kh, other=0.0), acc_g, UPCAST)
        acc_o = dot_acc(b_h, tl.load(p_wk + 3 * HIDDEN * H_OUT, mask=m_kh, other=0.0), acc_o, UPCAST)

    p_xp = x_proj_ptr + t.to(tl.int64) * stride_xp_t + o_b64[:, None] * stride_xp_b + i_d * (4 * HIDDEN) + o_h[None, :]
    acc_i += tl.load(p_xp, mask=m_xp, other=0.0).to(acc_dtype)
    acc_f += tl.load(p_xp + HIDDEN, mask=m_xp, other=0.0).to(acc_dtype)
    acc_g += tl.load(p_xp + 2 * HIDDEN, mask=m_xp, other=0.0).to(acc_dtype)
    acc_o += tl.load(p_xp + 3 * HIDDEN, mask=m_xp, other=0.0).to(acc_dtype)
    if HAS_BIAS:
        p_bias = bias_ptr + i_d * (4 * HIDDEN) + o_h
        acc_i += tl.load(p_bias, mask=m_h, other=0.0)[None, :]
        acc_f += tl.load(p_bias + HIDDEN, mask=m_h, other=0.0)[None, :]
        acc_g += tl.load(p_bias + 2 * HIDDEN, mask=m_h, other=0.0)[None, :]
        acc_o += tl.load(p_bias + 3 * HIDDEN, mask=m_h, other=0.0)[None, :]

    c_prev = tl.load(c_prev_ptr + i_d * stride_cp_d + o_b64[:, None] * stride_cp_b + o_h[None, :], mask=m_bh)
    gate_i, gate_f, gate_g, gate_o, c, h = cell_forward(acc_i, acc_f, acc_g, acc_o, c_prev)
    if HAS_LENGTHS:
        c = tl.where(active, c, c_prev)
        gate_i, gate_f, gate_g, gate_o = zero_unless(active, gate_i, gate_f, gate_g, gate_o)

    tl.store(c_out_ptr + i_d * stride_co_d + o_b64[:, None] * stride_co_b + o_h[None, :], c, mask=m_bh)
    p_ho = h_out_ptr + i_d * stride_ho_d + o_b64[:, None] * stride_ho_b + o_h[None, :]
    tl.store(p_ho, h.to(h_out_ptr.dtype.element_ty), mask=m_bh)
    if SAVE_GATES:
        p_go = gates_out_ptr + i_d * stride_go_d + o_b64[:, None] * stride_go_b + o_h[None, :]
        tl.store(p_go, gate_i, mask=m_bh)
        tl.store(p_go + HIDDEN, gate_f, mask=m_bh)
        tl.store(p_go + 2 * HIDDEN, gate_g, mask=m_bh)
        tl.store(p_go + 3 * HIDDEN, gate_o, mask=m_bh)
