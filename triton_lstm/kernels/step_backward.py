"""Backward kernel of one LSTM time step, for every direction of a layer at once.

Given dh = dL/dh_t (complete: the output's gradient plus what step t + 1 added), dm = dL/d(o * tanh(c_t)) (dh, or
dh @ W_hr when the layer projects) and dc = the cell gradient arriving from step t + 1, every program recomputes
the gate gradients of all H hidden units chunk by chunk and multiplies them by its column tile of W_hh:
    dc_t      = dc + dm * o * (1 - tanh(c_t)^2)
    da_i      = dc_t * g * i (1 - i)      da_f = dc_t * c_{t-1} * f (1 - f)
    da_g      = dc_t * i * (1 - g^2)      da_o = dm * tanh(c_t) * o (1 - o)
    dh_{t-1} += [da_i, da_f, da_g, da_o] @ W_hh
    dc_{t-1}  = dc_t * f
The programs of the first column tile also store the gate gradients (for the weight gradients, computed later
as one GEMM over all steps) and dc_{t-1}. Recomputing the element-wise part per column tile keeps the whole
step in one launch; it costs H * B element-wise work per tile against H * B * BLOCK_N multiply-adds. With a
projection each program also recomputes dm = dh @ W_hr for its batch tile, chunk by chunk.

Like the forward kernel it takes whole per-call buffers and the step index (64-bit offsets computed here), so that
every launch of a call has the same arguments but ``step``:
    d_hs (T + 1, D, B, H_OUT): slot s + 1 holds dL/dh_s, on entry the output's part only; step s reads slot s + 1
        and adds the recurrent part to slot s, in place, so slot 0 ends as dL/dh0 (zero on entry)
    d_cs (2, D, B, H): step s reads slot (s + 1) % 2 and writes slot s % 2

Variable lengths (HAS_LENGTHS): a row past its length at this step has zero gate gradients and passes dc on
unchanged, mirroring the forward kernel, which kept its cell state there.
"""

import triton
import triton.language as tl

from triton_lstm.kernels.math import cell_backward, dot_acc, zero_unless


@triton.jit(do_not_specialize=["step", "batch"])
def lstm_step_backward_kernel(
    gates_ptr,  # (T, D, B, 4H), accumulator dtype: i, f, g, o after activation (saved by the forward)
    cs_ptr,  # (T + 1, D, B, H), accumulator dtype: cell states, slot s + 1 = c_s (saved by the forward)
    w_hh_ptr,  # (D, 4H, H_OUT), contiguous
    w_hr_ptr,  # (D, H_OUT, H), contiguous (only if HAS_PROJ)
    d_hs_ptr,  # (T + 1, D, B, H_OUT), accumulator dtype, in and out
    d_cs_ptr,  # (2, D, B, H), accumulator dtype, in and out
    d_gates_ptr,  # (T, D, B, 4H), accumulator dtype, out
    lengths_ptr,  # (B,) int32: each row's length (only if HAS_LENGTHS)
    step,
    batch,
    HIDDEN: tl.constexpr,
    H_OUT: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    TF32: tl.constexpr,  # float32 products in TF32 (triton_lstm.precision)
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_U: tl.constexpr,
):
    i_b = tl.program_id(0)
    i_n = tl.program_id(1)
    i_d = tl.program_id(2)
    num_directions = tl.num_programs(2)
    acc_dtype = d_hs_ptr.dtype.element_ty

    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_b = o_b < batch
    m_n = o_n < H_OUT
    # Row (d, b) of a (D, B, N) slice, and the rows of one slot: int64, as slots times rows pass 2^31.
    o_row = i_d.to(tl.int64) * batch + o_b
    slot_rows = num_directions.to(tl.int64) * batch
    if HAS_LENGTHS:
        active = (step < tl.load(lengths_ptr + o_b, mask=m_b, other=0))[:, None]
    p_w = w_hh_ptr + i_d.to(tl.int64) * (4 * HIDDEN * H_OUT) + o_n[None, :]
    # The programs of the first column tile store the gate gradients and dc_{t-1}: a mask rather than an `if` in
    # the loop, whose branch leaves the dot operands live across it and makes ptxas spill on sm_80 (aot report).
    # (`i_n + 0 * o_b`: Triton 3.9's interpreter rejects a mask combined with a scalar condition.)
    m_b_first = m_b & ((i_n + 0 * o_b) == 0)
    # Per-row offsets of this step's slots.
    r_step = ((step * slot_rows + o_row) * HIDDEN)[:, None]  # cs slot s = c_{s-1}; d_gates slot s (times 4)
    r_next = (((step + 1) * slot_rows + o_row) * HIDDEN)[:, None]  # cs slot s + 1 = c_s
    r_d_c_in = ((((step + 1) % 2) * slot_rows + o_row) * HIDDEN)[:, None]
    r_d_c_out = (((step % 2) * slot_rows + o_row) * HIDDEN)[:, None]
    p_d_h_in = d_hs_ptr + (((step + 1) * slot_rows + o_row) * H_OUT)[:, None]
    if HAS_PROJ:
        p_wr = w_hr_ptr + i_d.to(tl.int64) * (H_OUT * HIDDEN)

    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=acc_dtype)
    for u0 in range(0, HIDDEN, BLOCK_U):
        o_u = u0 + tl.arange(0, BLOCK_U)
        m_u = o_u < HIDDEN
        m_bu = m_b[:, None] & m_u[None, :]
        p_g = gates_ptr + 4 * r_step + o_u[None, :]
        gate_i = tl.load(p_g, mask=m_bu, other=0.0)
        gate_f = tl.load(p_g + HIDDEN, mask=m_bu, other=0.0)
        gate_g = tl.load(p_g + 2 * HIDDEN, mask=m_bu, other=0.0)
        gate_o = tl.load(p_g + 3 * HIDDEN, mask=m_bu, other=0.0)
        if HAS_LENGTHS:
            # Past a row's length, f = 1 passes dc on unchanged (the gate gradients are masked to zero below).
            gate_f = tl.where(active, gate_f, 1.0)
        c = tl.load(cs_ptr + r_next + o_u[None, :], mask=m_bu, other=0.0)
        c_prev = tl.load(cs_ptr + r_step + o_u[None, :], mask=m_bu, other=0.0)
        if HAS_PROJ:
            # dm[:, u0:u0 + BLOCK_U] = dh @ W_hr[:, u0:u0 + BLOCK_U], in the accumulator's precision.
            d_m = tl.zeros((BLOCK_B, BLOCK_U), dtype=acc_dtype)
            for k0 in range(0, H_OUT, BLOCK_N):
                o_k = k0 + tl.arange(0, BLOCK_N)
                m_k = o_k < H_OUT
                d_h = tl.load(p_d_h_in + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
                b_wr = tl.load(p_wr + o_k[:, None] * HIDDEN + o_u[None, :], mask=m_k[:, None] & m_u[None, :], other=0.0)
                d_m = dot_acc(d_h, b_wr, d_m, True, TF32)
        else:
            d_m = tl.load(p_d_h_in + o_u[None, :], mask=m_bu, other=0.0)
        d_c = tl.load(d_cs_ptr + r_d_c_in + o_u[None, :], mask=m_bu, other=0.0)

        da_i, da_f, da_g, da_o, d_c = cell_backward(d_m, d_c, gate_i, gate_f, gate_g, gate_o, c, c_prev)
        if HAS_LENGTHS:
            # Zero past a row's length (the saved gates there are zero too; see zero_unless for why not multiply).
            da_i, da_f, da_g, da_o = zero_unless(active, da_i, da_f, da_g, da_o)

        m_first = m_b_first[:, None] & m_u[None, :]
        p_dg = d_gates_ptr + 4 * r_step + o_u[None, :]
        tl.store(p_dg, da_i, mask=m_first)
        tl.store(p_dg + HIDDEN, da_f, mask=m_first)
        tl.store(p_dg + 2 * HIDDEN, da_g, mask=m_first)
        tl.store(p_dg + 3 * HIDDEN, da_o, mask=m_first)
        tl.store(d_cs_ptr + r_d_c_out + o_u[None, :], d_c * gate_f, mask=m_first)

        # W_hh tile of gate q: element (u, n) is W_hh[d, q * H + u, n]; the upcast keeps the products in the
        # accumulator's precision (gate gradients are never rounded to fp16/bf16).
        m_un = m_u[:, None] & m_n[None, :]
        p_wu = p_w + o_u[:, None] * H_OUT
        acc = dot_acc(da_i, tl.load(p_wu, mask=m_un, other=0.0), acc, True, TF32)
        acc = dot_acc(da_f, tl.load(p_wu + HIDDEN * H_OUT, mask=m_un, other=0.0), acc, True, TF32)
        acc = dot_acc(da_g, tl.load(p_wu + 2 * HIDDEN * H_OUT, mask=m_un, other=0.0), acc, True, TF32)
        acc = dot_acc(da_o, tl.load(p_wu + 3 * HIDDEN * H_OUT, mask=m_un, other=0.0), acc, True, TF32)

    # dh_{t-1} += the recurrent part: this program alone reads and writes its tile of slot s.
    m_bn = m_b[:, None] & m_n[None, :]
    p_d_h_out = d_hs_ptr + ((step * slot_rows + o_row) * H_OUT)[:, None] + o_n[None, :]
    tl.store(p_d_h_out, acc + tl.load(p_d_h_out, mask=m_bn, other=0.0), mask=m_bn)
