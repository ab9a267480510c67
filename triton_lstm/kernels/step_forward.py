"""Forward kernel of one LSTM time step, for every direction of a layer at once.

For each direction d and each (batch tile, hidden tile) program:
    gates = x_proj[t_d] + bias + h_prev @ W_hh^T        (all four gates of the tile's hidden units)
    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid
    c = f * c_prev + i * g,   m = o * tanh(c),   h = m (or W_hr m when the layer projects)
where t_d = step for the forward direction and T - 1 - step for the reverse one. Gate rows of W_hh are ordered
i, f, g, o (torch's layout), so hidden unit j reads rows j, H + j, 2H + j and 3H + j.

The kernel takes whole per-call buffers and the step index, and computes each step's offsets itself (64-bit):
every launch of a call has the same arguments but ``step``, so the host launches it with no tensor op in between.
Buffers of a layer with D directions, in step order (slot s of hs and cs is the state step s starts from):
    hs (T + 1, D, B, H_OUT): slot 0 holds h0; step s writes slot s + 1 (without projection)
    cs (T + 1, D, B, H) with SAVE, else (2, D, B, H) used alternately (step s reads s % 2, writes (s + 1) % 2)
    gates (T, D, B, 4H): i, f, g, o after activation (SAVE only)

Projection (HAS_PROJ): h_{s-1} = W_hr m_{s-1} is needed whole by every program of step s, so each program computes
the chunks of it that its reduction reads from m_{s-1} (two slots ms (2, D, B, H), step s writing s % 2), rounded
to the input dtype as a separate projection would; the programs of the first hidden tile store it as hs[s]. Step 0
reads h0 from hs[0]; the host projects the last step's m into hs[T] after the loop.

Variable lengths (HAS_LENGTHS): row b runs steps 0 .. len_b - 1 only, its reverse direction starting at its own
end (t = len_b - 1 - step). At later steps the row keeps its cell state, so the last slice holds each row's
final c, and stores zero gates, so that nothing computed from the saved steps of a finished row is garbage.
"""

import triton
import triton.language as tl

from triton_lstm.kernels.math import cell_forward, dot_acc, zero_unless


@triton.jit(do_not_specialize=["step", "seq_len", "batch"])
def lstm_step_forward_kernel(
    x_proj_ptr,  # (T, B, D * 4H): x @ W_ih^T of every step, both directions side by side
    bias_ptr,  # (D, 4H) in the accumulator dtype: b_ih + b_hh (only if HAS_BIAS)
    w_hh_ptr,  # (D, 4H, H_OUT), contiguous
    w_hr_ptr,  # (D, H_OUT, H), contiguous (only if HAS_PROJ)
    hs_ptr,  # (T + 1, D, B, H_OUT)
    ms_ptr,  # (2, D, B, H) in the input dtype: o * tanh(c) before the projection (only if HAS_PROJ)
    cs_ptr,  # (T + 1, D, B, H) with SAVE, else (2, D, B, H), in the accumulator dtype
    gates_ptr,  # (T, D, B, 4H) in the accumulator dtype (only if SAVE)
    lengths_ptr,  # (B,) int32: each row's length (only if HAS_LENGTHS)
    step,
    seq_len,
    batch,
    HIDDEN: tl.constexpr,
    H_OUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    SAVE: tl.constexpr,
    UPCAST: tl.constexpr,
    TF32: tl.constexpr,  # float32 products in TF32 (triton_lstm.precision)
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    i_b = tl.program_id(0)
    i_h = tl.program_id(1)
    i_d = tl.program_id(2)
    num_directions = tl.num_programs(2)
    acc_dtype = cs_ptr.dtype.element_ty

    r_b = tl.arange(0, BLOCK_B)  # rows of the batch tile
    o_b = i_b * BLOCK_B + r_b
    o_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)
    m_b = o_b < batch
    m_h = o_h < HIDDEN
    m_bh = m_b[:, None] & m_h[None, :]
    # A (S, D, B, N) buffer's slot s starts at row s * D * B; this tile's first row in a slot is d * B + i_b * BLOCK_B.
    # Scalar int64 row numbers (slots times rows pass 2^31), small per-row offsets r_b * N added to them.
    slot_rows = num_directions.to(tl.int64) * batch
    tile_row = i_d.to(tl.int64) * batch + i_b * BLOCK_B
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + o_b, mask=m_b, other=0)
        active = (step < length)[:, None]
        t = tl.where(i_d == 0, step, length - 1 - step)[:, None]
    else:
        active = True
        t = step + i_d * (seq_len - 1 - 2 * step)
    m_xp = m_bh & active
    # Block-shaped conditions on the step: Triton 3.9's interpreter rejects a mask combined with a scalar one.
    first_step = (step + 0 * o_b) == 0

    # x_proj (T, B, D * 4H): row (t, b) holds both directions; t is per row with variable lengths.
    xp_row = num_directions * (4 * HIDDEN)
    if HAS_LENGTHS:
        p_xp = x_proj_ptr + (t.to(tl.int64) * batch + o_b[:, None]) * xp_row
    else:
        p_xp = x_proj_ptr + (t.to(tl.int64) * batch + i_b * BLOCK_B) * xp_row + r_b[:, None] * xp_row
    p_xp += i_d * (4 * HIDDEN) + o_h[None, :]
    acc_i = tl.load(p_xp, mask=m_xp, other=0.0).to(acc_dtype)
    acc_f = tl.load(p_xp + HIDDEN, mask=m_xp, other=0.0).to(acc_dtype)
    acc_g = tl.load(p_xp + 2 * HIDDEN, mask=m_xp, other=0.0).to(acc_dtype)
    acc_o = tl.load(p_xp + 3 * HIDDEN, mask=m_xp, other=0.0).to(acc_dtype)
    if HAS_BIAS:
        p_bias = bias_ptr + i_d * (4 * HIDDEN) + o_h
        acc_i += tl.load(p_bias, mask=m_h, other=0.0)[None, :]
        acc_f += tl.load(p_bias + HIDDEN, mask=m_h, other=0.0)[None, :]
        acc_g += tl.load(p_bias + 2 * HIDDEN, mask=m_h, other=0.0)[None, :]
        acc_o += tl.load(p_bias + 3 * HIDDEN, mask=m_h, other=0.0)[None, :]

    p_h_rows = hs_ptr + step * (slot_rows * H_OUT) + tile_row * H_OUT + r_b[:, None] * H_OUT
    # W_hh^T tile of gate q: element (k, j) is W_hh[d, q * H + j, k].
    p_w = w_hh_ptr + i_d.to(tl.int64) * (4 * HIDDEN * H_OUT) + o_h[None, :] * H_OUT
    if HAS_PROJ:
        p_m_rows = ms_ptr + (((step + 1) % 2) * slot_rows + tile_row) * HIDDEN + r_b[:, None] * HIDDEN
        p_wr = w_hr_ptr + i_d.to(tl.int64) * (H_OUT * HIDDEN)
        # The first hidden tile stores h_{s-1} (step 0 keeps h0).
        m_store_h = m_b & ((i_h + 0 * o_b) == 0) & ~first_step
    for k0 in range(0, H_OUT, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < H_OUT
        m_bk = m_b[:, None] & m_k[None, :]
        if HAS_PROJ:
            # h_{s-1}[:, k0:k0 + BLOCK_K] = m_{s-1} @ W_hr[k0:k0 + BLOCK_K]^T; W_hr^T tile: (u, k) is W_hr[d, k, u].
            proj = tl.zeros((BLOCK_B, BLOCK_K), dtype=acc_dtype)
            for u0 in range(0, HIDDEN, BLOCK_H):
                o_u = u0 + tl.arange(0, BLOCK_H)
                m_u = o_u < HIDDEN
                b_m = tl.load(p_m_rows + o_u[None, :], mask=m_b[:, None] & m_u[None, :], other=0.0)
                b_wr = tl.load(p_wr + o_k[None, :] * HIDDEN + o_u[:, None], mask=m_u[:, None] & m_k[None, :], other=0.0)
                proj = dot_acc(b_m, b_wr, proj, UPCAST, TF32)
            h0 = tl.load(p_h_rows + o_k[None, :], mask=m_bk & first_step[:, None], other=0.0)
            b_h = tl.where(first_step[:, None], h0, proj.to(h0.dtype))
            tl.store(p_h_rows + o_k[None, :], b_h, mask=m_store_h[:, None] & m_k[None, :])
        else:
            b_h = tl.load(p_h_rows + o_k[None, :], mask=m_bk, other=0.0)
        m_kh = m_k[:, None] & m_h[None, :]
        p_wk = p_w + o_k[:, None]
        acc_i = dot_acc(b_h, tl.load(p_wk, mask=m_kh, other=0.0), acc_i, UPCAST, TF32)
        acc_f = dot_acc(b_h, tl.load(p_wk + HIDDEN * H_OUT, mask=m_kh, other=0.0), acc_f, UPCAST, TF32)
        acc_g = dot_acc(b_h, tl.load(p_wk + 2 * HIDDEN * H_OUT, mask=m_kh, other=0.0), acc_g, UPCAST, TF32)
        acc_o = dot_acc(b_h, tl.load(p_wk + 3 * HIDDEN * H_OUT, mask=m_kh, other=0.0), acc_o, UPCAST, TF32)

    # Cell-state slots: every step's with SAVE, else two used alternately.
    if SAVE:
        c_in = step
        c_out = step + 1
    else:
        c_in = step % 2
        c_out = (step + 1) % 2
    o_bh = r_b[:, None] * HIDDEN + o_h[None, :]  # within a tile of a (.., B, H) slot
    c_prev = tl.load(cs_ptr + (c_in * slot_rows + tile_row) * HIDDEN + o_bh, mask=m_bh)
    gate_i, gate_f, gate_g, gate_o, c, h = cell_forward(acc_i, acc_f, acc_g, acc_o, c_prev)
    if HAS_LENGTHS:
        c = tl.where(active, c, c_prev)
        gate_i, gate_f, gate_g, gate_o = zero_unless(active, gate_i, gate_f, gate_g, gate_o)

    tl.store(cs_ptr + (c_out * slot_rows + tile_row) * HIDDEN + o_bh, c, mask=m_bh)
    if HAS_PROJ:
        tl.store(ms_ptr + ((step % 2) * slot_rows + tile_row) * HIDDEN + o_bh, h.to(ms_ptr.dtype.element_ty), mask=m_bh)
    else:
        p_h = hs_ptr + ((step + 1) * slot_rows + tile_row) * H_OUT + r_b[:, None] * H_OUT + o_h[None, :]
        tl.store(p_h, h.to(hs_ptr.dtype.element_ty), mask=m_bh)
    if SAVE:
        p_go = gates_ptr + (step * slot_rows + tile_row) * (4 * HIDDEN) + r_b[:, None] * (4 * HIDDEN) + o_h[None, :]
        tl.store(p_go, gate_i, mask=m_bh)
        tl.store(p_go + HIDDEN, gate_f, mask=m_bh)
        tl.store(p_go + 2 * HIDDEN, gate_g, mask=m_bh)
        tl.store(p_go + 3 * HIDDEN, gate_o, mask=m_bh)
