"""Persistent backward kernel: one launch walks a layer's steps in reverse, all directions at once.

Grid (batch tiles, P, D), as the forward. Each step has two phases behind group barriers:
  A. Each program computes the gate gradients of its own hidden units (as the step backward kernel does) from
     dL/dh_t (projected back through W_hr when the layer projects), the saved gates and cell states, and the
     cell gradient it carries for those units; it stores them and the next cell gradient.
  B. Each program computes a column slice of dL/dh_{t-1} = [da_i, da_f, da_g, da_o] @ W_hh from all units'
     gate gradients and adds it to the upstream gradient of step t - 1 (or writes dL/dh0 after step 0).
The weight gradients are left to GEMMs over all steps afterwards, from the stored gate gradients.
"""

import triton
import triton.language as tl

from triton_lstm.kernels.math import cell_backward, dot_acc, zero_unless
from triton_lstm.kernels.sync import group_barrier


@triton.jit(do_not_specialize=["seq_len"])
def lstm_persistent_backward_kernel(
    gates_ptr,  # (T, D, B, 4H), accumulator dtype: i, f, g, o after activation
    cs_ptr,  # (T + 1, D, B, H), accumulator dtype: slot 0 c0, slot s + 1 c after step s
    w_hh_ptr,  # (D, 4H, H_OUT), contiguous
    w_hr_ptr,  # (D, H_OUT, H), contiguous (only if HAS_PROJ)
    d_hs_ptr,  # (T, D, B, H_OUT), accumulator dtype: upstream dL/dh of each step; becomes the total dL/dh
    d_gates_ptr,  # (T, D, B, 4H), accumulator dtype, out: gate pre-activation gradients
    d_cs_ptr,  # (2, D, B, H), accumulator dtype: slot 0 holds dL/dc_n on entry; slot T % 2 dL/dc0 on exit
    d_h0_ptr,  # (D, B, H_OUT), accumulator dtype, out
    lengths_ptr,  # (B,) int32 (only if HAS_LENGTHS)
    sync_ptr,  # (batch tiles * D,) int32, zero on entry
    seq_len,
    batch,
    HIDDEN: tl.constexpr,
    H_OUT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    UNIT_TILES: tl.constexpr,
    BLOCK_N: tl.constexpr,
    COL_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,  # reduction chunk: over H_OUT for the projection, over hidden units in phase B
    HAS_PROJ: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    GRID_SYNC: tl.constexpr,  # more than one program per group: meet at the counter, not only the block barrier
):
    i_b = tl.program_id(0)
    i_p = tl.program_id(1)
    i_d = tl.program_id(2)
    n_groups_b = tl.num_programs(0)
    n_p = tl.num_programs(1)
    n_d = tl.num_programs(2)
    acc_dtype = d_hs_ptr.dtype.element_ty
    sync = sync_ptr + i_d * n_groups_b + i_b

    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < batch
    o_b64 = o_b.to(tl.int64)
    h_slot = n_d.to(tl.int64) * batch * H_OUT
    c_slot = n_d.to(tl.int64) * batch * HIDDEN
    g_slot = n_d.to(tl.int64) * batch * (4 * HIDDEN)
    p_dh = d_hs_ptr + i_d * batch * H_OUT + o_b64[:, None] * H_OUT
    p_c = cs_ptr + i_d * batch * HIDDEN + o_b64[:, None] * HIDDEN
    p_dc = d_cs_ptr + i_d * batch * HIDDEN + o_b64[:, None] * HIDDEN
    p_g = gates_ptr + i_d * batch * (4 * HIDDEN) + o_b64[:, None] * (4 * HIDDEN)
    p_dg = d_gates_ptr + i_d * batch * (4 * HIDDEN) + o_b64[:, None] * (4 * HIDDEN)
    w_hh = w_hh_ptr + i_d.to(tl.int64) * (4 * HIDDEN * H_OUT)
    w_hr = w_hr_ptr + i_d.to(tl.int64) * (H_OUT * HIDDEN)
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + o_b, mask=m_b, other=0)

    arrivals = 0
    it = 0
    step = seq_len - 1
    while step >= 0:
        dc_in = it % 2
        dc_out = (it + 1) % 2
        # Phase A: gate gradients of this program's units.
        for j in tl.static_range(UNIT_TILES):
            o_u = (i_p * UNIT_TILES + j) * BLOCK_U + tl.arange(0, BLOCK_U)
            m_u = o_u < HIDDEN
            m_bu = m_b[:, None] & m_u[None, :]
            if HAS_PROJ:
                # dL/dm = dL/dh @ W_hr: W_hr[n, u] at (n, u).
                d_m = tl.zeros((BLOCK_B, BLOCK_U), dtype=acc_dtype)
                for k0 in range(0, H_OUT, BLOCK_K):
                    o_k = k0 + tl.arange(0, BLOCK_K)
                    m_bk = m_b[:, None] & (o_k[None, :] < H_OUT)
                    d_h = tl.load(p_dh + step * h_slot + o_k[None, :], mask=m_bk, other=0.0, cache_modifier=".cg")
                    m_ku = (o_k[:, None] < H_OUT) & m_u[None, :]
                    w_r = tl.load(w_hr + o_k[:, None] * HIDDEN + o_u[None, :], mask=m_ku, other=0.0)
                    d_m = dot_acc(d_h, w_r, d_m, True)
            else:
                d_m = tl.load(p_dh + step * h_slot + o_u[None, :], mask=m_bu, other=0.0, cache_modifier=".cg")
            p_gu = p_g + step * g_slot + o_u[None, :]
            gate_i = tl.load(p_gu, mask=m_bu, other=0.0)
            gate_f = tl.load(p_gu + HIDDEN, mask=m_bu, other=0.0)
            gate_g = tl.load(p_gu + 2 * HIDDEN, mask=m_bu, other=0.0)
            gate_o = tl.load(p_gu + 3 * HIDDEN, mask=m_bu, other=0.0)
            if HAS_LENGTHS:
                # Past a row's length, f = 1 passes dc on unchanged (the gate gradients are masked to zero below).
                active = (step < length)[:, None]
                gate_f = tl.where(active, gate_f, 1.0)
            c = tl.load(p_c + (step + 1) * c_slot + o_u[None, :], mask=m_bu, other=0.0)
            c_prev = tl.load(p_c + step * c_slot + o_u[None, :], mask=m_bu, other=0.0)
            d_c = tl.load(p_dc + dc_in * c_slot + o_u[None, :], mask=m_bu, other=0.0)
            da_i, da_f, da_g, da_o, d_c = cell_backward(d_m, d_c, gate_i, gate_f, gate_g, gate_o, c, c_prev)
            if HAS_LENGTHS:
                da_i, da_f, da_g, da_o = zero_unless(active, da_i, da_f, da_g, da_o)
            p_dgu = p_dg + step * g_slot + o_u[None, :]
            tl.store(p_dgu, da_i, mask=m_bu)
            tl.store(p_dgu + HIDDEN, da_f, mask=m_bu)
            tl.store(p_dgu + 2 * HIDDEN, da_g, mask=m_bu)
            tl.store(p_dgu + 3 * HIDDEN, da_o, mask=m_bu)
            tl.store(p_dc + dc_out * c_slot + o_u[None, :], d_c * gate_f, mask=m_bu)

        arrivals += n_p
        group_barrier(sync, arrivals, GRID_SYNC)

        # Phase B: this program's columns of dL/dh_{t-1}, from every unit's gate gradients.
        for j in tl.static_range(COL_TILES):
            o_n = (i_p * COL_TILES + j) * BLOCK_N + tl.arange(0, BLOCK_N)
            m_n = o_n < H_OUT
            acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=acc_dtype)
            # Names distinct from phase A's: triton 3.6 treats a name reassigned in a loop as loop-carried.
            for v0 in range(0, HIDDEN, BLOCK_K):
                o_v = v0 + tl.arange(0, BLOCK_K)
                m_bv = m_b[:, None] & (o_v[None, :] < HIDDEN)
                m_vn = (o_v[:, None] < HIDDEN) & m_n[None, :]
                p_dgv = p_dg + step * g_slot + o_v[None, :]
                p_w = w_hh + o_v[:, None] * H_OUT + o_n[None, :]
                for q in tl.static_range(4):
                    d_gate = tl.load(p_dgv + q * HIDDEN, mask=m_bv, other=0.0, cache_modifier=".cg")
                    acc = dot_acc(d_gate, tl.load(p_w + q * HIDDEN * H_OUT, mask=m_vn, other=0.0), acc, True)
            m_bn = m_b[:, None] & m_n[None, :]
            if step > 0:
                p_prev = p_dh + (step - 1) * h_slot + o_n[None, :]
                tl.store(p_prev, tl.load(p_prev, mask=m_bn, other=0.0) + acc, mask=m_bn)
            else:
                p_h0 = d_h0_ptr + i_d * batch * H_OUT + o_b64[:, None] * H_OUT + o_n[None, :]
                tl.store(p_h0, acc, mask=m_bn)

        arrivals += n_p
        group_barrier(sync, arrivals, GRID_SYNC)
        step -= 1
        it += 1
