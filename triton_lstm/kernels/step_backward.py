"""Backward kernel of one LSTM time step, for every direction of a layer at once.

Given dm = dL/d(o * tanh(c_t)) (dL/dh_t, or dL/dh_t @ W_hr when the layer projects) and dc = the cell gradient
arriving from step t + 1, every program recomputes the gate gradients of all H hidden units chunk by chunk and
multiplies them by its column tile of W_hh:
    dc_t      = dc + dm * o * (1 - tanh(c_t)^2)
    da_i      = dc_t * g * i (1 - i)      da_f = dc_t * c_{t-1} * f (1 - f)
    da_g      = dc_t * i * (1 - g^2)      da_o = dm * tanh(c_t) * o (1 - o)
    dh_{t-1}  = [da_i, da_f, da_g, da_o] @ W_hh (+ the output gradient of step t - 1)
    dc_{t-1}  = dc_t * f
The programs of the first column tile also store the gate gradients (for the weight gradients, computed later
as one GEMM over all steps) and dc_{t-1}. Recomputing the element-wise part per column tile keeps the whole
step in one launch; it costs H * B element-wise work per tile against H * B * BLOCK_N multiply-adds.

Variable lengths (HAS_LENGTHS): a row past its length at this step has zero gate gradients and passes dc on
unchanged, mirroring the forward kernel, which kept its cell state there.
"""

import triton
import triton.language as tl

from triton_lstm.kernels.math import cell_backward, dot_acc, zero_unless


@triton.jit(do_not_specialize=["step"])
def lstm_step_backward_kernel(
    d_m_ptr,  # (D, B, H), accumulator dtype
    d_c_ptr,  # (D, B, H), accumulator dtype
    gates_ptr,  # (D, B, 4H), accumulator dtype: i, f, g, o after activation
    c_ptr,  # (D, B, H), accumulator dtype: c_t
    c_prev_ptr,  # (D, B, H), accumulator dtype: c_{t-1}
    w_hh_ptr,  # (D, 4H, H_OUT), contiguous
    d_out_prev_ptr,  # (D, B, H_OUT): output gradient of step t - 1 (only if HAS_D_OUT_PREV)
    d_gates_ptr,  # (D, B, 4H), accumulator dtype, out
    d_c_prev_ptr,  # (D, B, H), accumulator dtype, out
    d_h_prev_ptr,  # (D, B, H_OUT), accumulator dtype, out
    lengths_ptr,  # (B,) int32: each row's length (only if HAS_LENGTHS)
    step,
    batch,
    stride_dm_d,
    stride_dm_b,
    stride_dc_d,
    stride_dc_b,
    stride_g_d,
    stride_g_b,
    stride_c_d,
    stride_c_b,
    stride_cp_d,
    stride_cp_b,
    stride_dop_d,
    stride_dop_b,
    stride_dg_d,
    stride_dg_b,
    stride_dcp_d,
    stride_dcp_b,
    stride_dhp_d,
    stride_dhp_b,
    HIDDEN: tl.constexpr,
    H_OUT: tl.constexpr,
    HAS_D_OUT_PREV: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_U: tl.constexpr,
):
    i_b = tl.program_id(0)
    i_n = tl.program_id(1)
    i_d = tl.program_id(2)
    acc_dtype = d_h_prev_ptr.dtype.element_ty

    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_b = o_b < batch
    m_n = o_n < H_OUT
    o_b64 = o_b.to(tl.int64)
    if HAS_LENGTHS:
        active = (step < tl.load(lengths_ptr + o_b, mask=m_b, other=0))[:, None]
    p_w = w_hh_ptr + i_d.to(tl.int64) * (4 * HIDDEN * H_OUT) + o_n[None, :]
    # The programs of the first column tile store the gate gradients and dc_{t-1}: a mask rather than an `if` in
    # the loop, whose branch leaves the dot operands live across it and makes ptxas spill on sm_80 (aot report).
    # (`i_n + 0 * o_b`: Triton 3.9's interpreter rejects a mask combined with a scalar condition.)
    m_b_first = m_b & ((i_n + 0 * o_b) == 0)

    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=acc_dtype)
    for u0 in range(0, HIDDEN, BLOCK_U):
        o_u = u0 + tl.arange(0, BLOCK_U)
        m_u = o_u < HIDDEN
        m_bu = m_b[:, None] & m_u[None, :]
        p_g = gates_ptr + i_d * stride_g_d + o_b64[:, None] * stride_g_b + o_u[None, :]
        gate_i = tl.load(p_g, mask=m_bu, other=0.0)
        gate_f = tl.load(p_g + HIDDEN, mask=m_bu, other=0.0)
        gate_g = tl.load(p_g + 2 * HIDDEN, mask=m_bu, other=0.0)
        gate_o = tl.load(p_g + 3 * HIDDEN, mask=m_bu, other=0.0)
        if HAS_LENGTHS:
            # Past a row's length, f = 1 passes dc on unchanged (the gate gradients are masked to zero below).
            gate_f = tl.where(active, gate_f, 1.0)
        c = tl.load(c_ptr + i_d * stride_c_d + o_b64[:, None] * stride_c_b + o_u[None, :], mask=m_bu, other=0.0)
        c_prev = tl.load(
            c_prev_ptr + i_d * stride_cp_d + o_b64[:, None] * stride_cp_b + o_u[None, :], mask=m_bu, other=0.0
        )
        d_m = tl.load(d_m_ptr + i_d * stride_dm_d + o_b64[:, None] * stride_dm_b + o_u[None, :], mask=m_bu, other=0.0)
        d_c = tl.load(d_c_ptr + i_d * stride_dc_d + o_b64[:, None] * stride_dc_b + o_u[None, :], mask=m_bu, other=0.0)

        da_i, da_f, da_g, da_o, d_c = cell_backward(d_m, d_c, gate_i, gate_f, gate_g, gate_o, c, c_prev)
        if HAS_LENGTHS:
            # Zero past a row's length (the saved gates there are zero too; see zero_unless for why not multiply).
            da_i, da_f, da_g, da_o = zero_unless(active, da_i, da_f, da_g, da_o)

        m_first = m_b_first[:, None] & m_u[None, :]
        p_dg = d_gates_ptr + i_d * stride_dg_d + o_b64[:, None] * stride_dg_b + o_u[None, :]
        tl.store(p_dg, da_i, mask=m_first)
        tl.store(p_dg + HIDDEN, da_f, mask=m_first)
        tl.store(p_dg + 2 * HIDDEN, da_g, mask=m_first)
        tl.store(p_dg + 3 * HIDDEN, da_o, mask=m_first)
        p_dcp = d_c_prev_ptr + i_d * stride_dcp_d + o_b64[:, None] * stride_dcp_b + o_u[None, :]
        tl.store(p_dcp, d_c * gate_f, mask=m_first)

        # W_hh tile of gate q: element (u, n) is W_hh[d, q * H + u, n]; the upcast keeps the products in the
        # accumulator's precision (gate gradients are never rounded to fp16/bf16).
        m_un = m_u[:, None] & m_n[None, :]
        p_wu = p_w + o_u[:, None] * H_OUT
        acc = dot_acc(da_i, tl.load(p_wu, mask=m_un, other=0.0), acc, True)
        acc = dot_acc(da_f, tl.load(p_wu + HIDDEN * H_OUT, mask=m_un, other=0.0), acc, True)
        acc = dot_acc(da_g, tl.load(p_wu + 2 * HIDDEN * H_OUT, mask=m_un, other=0.0), acc, True)
        acc = dot_acc(da_o, tl.load(p_wu + 3 * HIDDEN * H_OUT, mask=m_un, other=0.0), acc, True)

    m_bn = m_b[:, None] & m_n[None, :]
    if HAS_D_OUT_PREV:
        p_dop = d_out_prev_ptr + i_d * stride_dop_d + o_b64[:, None] * stride_dop_b + o_n[None, :]
        acc += tl.load(p_dop, mask=m_bn, other=0.0).to(acc_dtype)
    tl.store(d_h_prev_ptr + i_d * stride_dhp_d + o_b64[:, None] * stride_dhp_b + o_n[None, :], acc, mask=m_bn)
