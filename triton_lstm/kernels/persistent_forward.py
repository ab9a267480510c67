"""Persistent forward kernel: one launch runs every time step of a layer, all directions at once.

Grid (batch tiles, P, D). The P programs of a (batch tile, direction) group split the hidden units: each owns
all four gate rows of its units, so the cell update fuses with the recurrent matmul. With HOIST_W (one unit
tile per program, and all of H_out in one reduction chunk) a program loads its slice of W_hh once, before the
time loop, and keeps it on chip; otherwise it streams W_hh in BLOCK_K chunks every step (from L2, where the
group's slices stay resident). Every step needs all of h_{t-1}, so the group meets at a barrier after writing
its slice of h_t. With a projection, each program then computes
a column slice of h_t = W_hr (o * tanh(c_t)) from the whole of o * tanh(c_t), behind a second barrier.

Under the interpreter P = 1 and the program loops over all unit (and column) tiles instead: the same
arithmetic, with barriers that pass at once. The state layout is the step launcher's (see ``launch.py``):
hs and cs slot 0 hold h0 and c0, slot s + 1 the state after step s.
"""

import triton
import triton.language as tl

from triton_lstm.kernels.math import cell_forward, dot_acc, zero_unless
from triton_lstm.kernels.sync import group_barrier


@triton.jit
def _gate_weights(w_ptr, o_u, o_k, HIDDEN: tl.constexpr, H_OUT: tl.constexpr):
    """W_hh^T tiles of the four gates for units o_u: tile q holds W_hh[q * H + u, k] at (k, u)."""
    mask = (o_k[:, None] < H_OUT) & (o_u[None, :] < HIDDEN)
    p_w = w_ptr + o_u[None, :] * H_OUT + o_k[:, None]
    w_i = tl.load(p_w, mask=mask, other=0.0)
    w_f = tl.load(p_w + HIDDEN * H_OUT, mask=mask, other=0.0)
    w_g = tl.load(p_w + 2 * HIDDEN * H_OUT, mask=mask, other=0.0)
    w_o = tl.load(p_w + 3 * HIDDEN * H_OUT, mask=mask, other=0.0)
    return w_i, w_f, w_g, w_o


@triton.jit
def _projection_weights(w_ptr, o_n, o_u, HIDDEN: tl.constexpr, H_OUT: tl.constexpr):
    """W_hr^T tile for output columns o_n: W_hr[n, u] at (u, n)."""
    mask = (o_u[:, None] < HIDDEN) & (o_n[None, :] < H_OUT)
    return tl.load(w_ptr + o_n[None, :] * HIDDEN + o_u[:, None], mask=mask, other=0.0)


@triton.jit(do_not_specialize=["seq_len"])
def lstm_persistent_forward_kernel(
    x_proj_ptr,  # (T, B, D * 4H): x @ W_ih^T of every step, both directions side by side
    bias_ptr,  # (D, 4H), accumulator dtype: b_ih + b_hh (only if HAS_BIAS)
    w_hh_ptr,  # (D, 4H, H_OUT), contiguous
    w_hr_ptr,  # (D, H_OUT, H), contiguous (only if HAS_PROJ)
    hs_ptr,  # (T + 1, D, B, H_OUT): slot 0 holds h0 on entry; slot s + 1 gets h after step s
    unprojected_ptr,  # (D, B, H), input dtype: o * tanh(c) of the current step (only if HAS_PROJ)
    cs_ptr,  # (T + 1 if SAVE else 2, D, B, H), accumulator dtype: slot 0 holds c0 on entry
    gates_ptr,  # (T, D, B, 4H), accumulator dtype: i, f, g, o after activation (only if SAVE)
    lengths_ptr,  # (B,) int32 (only if HAS_LENGTHS)
    sync_ptr,  # (batch tiles * D,) int32, zero on entry: one arrival counter per group
    seq_len,
    batch,
    stride_xp_t,
    stride_xp_b,
    HIDDEN: tl.constexpr,
    H_OUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    GRID_SYNC: tl.constexpr,  # more than one program per group: meet at the counter, not only the block barrier
    SAVE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    UNIT_TILES: tl.constexpr,
    BLOCK_N: tl.constexpr,
    COL_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,  # reduction chunk over H_OUT (gates) and H (projection)
    HOIST_W: tl.constexpr,  # UNIT_TILES == 1 and H_OUT <= BLOCK_K: W_hh slice loaded once
):
    i_b = tl.program_id(0)
    i_p = tl.program_id(1)
    i_d = tl.program_id(2)
    n_groups_b = tl.num_programs(0)
    n_p = tl.num_programs(1)
    n_d = tl.num_programs(2)
    acc_dtype = cs_ptr.dtype.element_ty
    h_dtype = hs_ptr.dtype.element_ty
    sync = sync_ptr + i_d * n_groups_b + i_b

    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < batch
    o_b64 = o_b.to(tl.int64)
    # Contiguous state buffers: (slot, D, B, N) with N = H_OUT, H or 4H.
    hs_slot = n_d.to(tl.int64) * batch * H_OUT
    cs_slot = n_d.to(tl.int64) * batch * HIDDEN
    gates_slot = n_d.to(tl.int64) * batch * (4 * HIDDEN)
    p_hs = hs_ptr + i_d * batch * H_OUT + o_b64[:, None] * H_OUT
    p_cs = cs_ptr + i_d * batch * HIDDEN + o_b64[:, None] * HIDDEN
    p_gates = gates_ptr + i_d * batch * (4 * HIDDEN) + o_b64[:, None] * (4 * HIDDEN)
    p_xp = x_proj_ptr + o_b64[:, None] * stride_xp_b + i_d * (4 * HIDDEN)
    w_hh = w_hh_ptr + i_d.to(tl.int64) * (4 * HIDDEN * H_OUT)
    w_hr = w_hr_ptr + i_d.to(tl.int64) * (H_OUT * HIDDEN)
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + o_b, mask=m_b, other=0)

    if HOIST_W:
        w_i0, w_f0, w_g0, w_o0 = _gate_weights(
            w_hh, i_p * BLOCK_U + tl.arange(0, BLOCK_U), tl.arange(0, BLOCK_K), HIDDEN, H_OUT
        )

    arrivals = 0
    step = 0
    while step < seq_len:
        if HAS_LENGTHS:
            active = (step < length)[:, None]
            t = tl.where(i_d == 0, step, length - 1 - step)[:, None]
        else:
            active = True
            t = step + i_d * (seq_len - 1 - 2 * step)
        c_in = step if SAVE else step % 2
        c_out = step + 1 if SAVE else (step + 1) % 2
        for j in tl.static_range(UNIT_TILES):
            o_u = (i_p * UNIT_TILES + j) * BLOCK_U + tl.arange(0, BLOCK_U)
            m_u = o_u < HIDDEN
            m_bu = m_b[:, None] & m_u[None, :]
            acc_i = tl.zeros((BLOCK_B, BLOCK_U), dtype=acc_dtype)
            acc_f = tl.zeros((BLOCK_B, BLOCK_U), dtype=acc_dtype)
            acc_g = tl.zeros((BLOCK_B, BLOCK_U), dtype=acc_dtype)
            acc_o = tl.zeros((BLOCK_B, BLOCK_U), dtype=acc_dtype)
            for k0 in range(0, H_OUT, BLOCK_K):
                o_k = k0 + tl.arange(0, BLOCK_K)
                # Other programs wrote parts of h_{t-1}: bypass L1 (".cg"), which the barrier's acquire invalidated.
                m_bk = m_b[:, None] & (o_k[None, :] < H_OUT)
                h_prev = tl.load(p_hs + step * hs_slot + o_k[None, :], mask=m_bk, other=0.0, cache_modifier=".cg")
                if HOIST_W:
                    w_i, w_f, w_g, w_o = w_i0, w_f0, w_g0, w_o0
                else:
                    w_i, w_f, w_g, w_o = _gate_weights(w_hh, o_u, o_k, HIDDEN, H_OUT)
                acc_i = dot_acc(h_prev, w_i, acc_i, UPCAST)
                acc_f = dot_acc(h_prev, w_f, acc_f, UPCAST)
                acc_g = dot_acc(h_prev, w_g, acc_g, UPCAST)
                acc_o = dot_acc(h_prev, w_o, acc_o, UPCAST)
            m_xp = m_bu & active
            p_x = p_xp + t.to(tl.int64) * stride_xp_t + o_u[None, :]
            acc_i += tl.load(p_x, mask=m_xp, other=0.0).to(acc_dtype)
            acc_f += tl.load(p_x + HIDDEN, mask=m_xp, other=0.0).to(acc_dtype)
            acc_g += tl.load(p_x + 2 * HIDDEN, mask=m_xp, other=0.0).to(acc_dtype)
            acc_o += tl.load(p_x + 3 * HIDDEN, mask=m_xp, other=0.0).to(acc_dtype)
            if HAS_BIAS:
                p_bias = bias_ptr + i_d * (4 * HIDDEN) + o_u
                acc_i += tl.load(p_bias, mask=m_u, other=0.0)[None, :]
                acc_f += tl.load(p_bias + HIDDEN, mask=m_u, other=0.0)[None, :]
                acc_g += tl.load(p_bias + 2 * HIDDEN, mask=m_u, other=0.0)[None, :]
                acc_o += tl.load(p_bias + 3 * HIDDEN, mask=m_u, other=0.0)[None, :]
            c_prev = tl.load(p_cs + c_in * cs_slot + o_u[None, :], mask=m_bu, other=0.0)
            gate_i, gate_f, gate_g, gate_o, c, h = cell_forward(acc_i, acc_f, acc_g, acc_o, c_prev)
            if HAS_LENGTHS:
                # A finished row keeps its cell state and saves zero gates (see the step kernel).
                c = tl.where(active, c, c_prev)
                gate_i, gate_f, gate_g, gate_o = zero_unless(active, gate_i, gate_f, gate_g, gate_o)
            tl.store(p_cs + c_out * cs_slot + o_u[None, :], c, mask=m_bu)
            if SAVE:
                p_g = p_gates + step * gates_slot + o_u[None, :]
                tl.store(p_g, gate_i, mask=m_bu)
                tl.store(p_g + HIDDEN, gate_f, mask=m_bu)
                tl.store(p_g + 2 * HIDDEN, gate_g, mask=m_bu)
                tl.store(p_g + 3 * HIDDEN, gate_o, mask=m_bu)
            if HAS_PROJ:
                p_m = unprojected_ptr + i_d * batch * HIDDEN + o_b64[:, None] * HIDDEN + o_u[None, :]
                tl.store(p_m, h.to(h_dtype), mask=m_bu)
            else:
                tl.store(p_hs + (step + 1) * hs_slot + o_u[None, :], h.to(h_dtype), mask=m_bu)

        if HAS_PROJ:
            arrivals += n_p
            group_barrier(sync, arrivals, GRID_SYNC)
            p_m = unprojected_ptr + i_d * batch * HIDDEN + o_b64[:, None] * HIDDEN
            for j in tl.static_range(COL_TILES):
                o_n = (i_p * COL_TILES + j) * BLOCK_N + tl.arange(0, BLOCK_N)
                h = tl.zeros((BLOCK_B, BLOCK_N), dtype=acc_dtype)
                for u0 in range(0, HIDDEN, BLOCK_K):
                    o_m = u0 + tl.arange(0, BLOCK_K)
                    m_bm = m_b[:, None] & (o_m[None, :] < HIDDEN)
                    unprojected = tl.load(p_m + o_m[None, :], mask=m_bm, other=0.0, cache_modifier=".cg")
                    h = dot_acc(unprojected, _projection_weights(w_hr, o_n, o_m, HIDDEN, H_OUT), h, UPCAST)
                m_bn = m_b[:, None] & (o_n[None, :] < H_OUT)
                tl.store(p_hs + (step + 1) * hs_slot + o_n[None, :], h.to(h_dtype), mask=m_bn)

        arrivals += n_p
        group_barrier(sync, arrivals, GRID_SYNC)
        step += 1
