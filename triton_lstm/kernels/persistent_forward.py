"""Persistent forward kernel: one launch runs every time step of a layer, all directions at once.

Grid (batch tiles, P, D). The P programs of a (batch tile, direction) group split the hidden units: each owns all
four gate rows of BLOCK_U units and computes them with one product against a W_hh tile whose gate columns are
interleaved (``gate_tiles``), so the cell update fuses with the recurrent matmul and c stays in registers. With
RESIDENT the program loads its W_hh slice once, before the time loop, and keeps it on chip for the whole sequence
(Triton holds a loop-invariant dot operand in shared memory); otherwise it streams it from L2 in BLOCK_K chunks
every step. K_SPLIT > 1 splits the reduction over H_out across the warps (a batched product summed at the end):
each warp then runs K_SPLIT times shorter chains of dependent MMAs, which at B <= 16 are latency-bound.

Every step needs all of h_{t-1}, so the group meets at a grid barrier after writing its slice of h_t. With a
projection each step has a second phase behind a second barrier: each program computes BLOCK_N columns of
h_t = W_hr (o * tanh(c_t)) from the whole of o * tanh(c_t), with its W_hr slice resident too.

The launch runs phases [phase_begin, phase_end) (one phase a step, two with a projection): the whole sequence in
one launch, or one phase per launch, whose boundary is then the barrier (tests run several programs that way under
the interpreter, where programs run one after another and a barrier between them cannot be waited for). The state
layout is the step launcher's (see ``launch.py``): hs and cs slot 0 hold h0 and c0, slot s + 1 the state after
step s (cs has two slots, used alternately, without SAVE).
"""

import triton
import triton.language as tl

from triton_lstm.kernels.gate_tiles import gate_rows, load_gate_columns, load_rows, split_gates
from triton_lstm.kernels.math import cell_forward, dot_acc, zero_unless
from triton_lstm.kernels.sync import arrive, wait


@triton.jit
def resident_product(p_rows, m_rows, w, acc, K_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr,
                     UPCAST: tl.constexpr, TF32: tl.constexpr, p_scale_rows=None,
                     SCALED: tl.constexpr = False):  # fmt: skip
    """acc + rows @ w, w a resident tile from ``load_gate_columns`` (K_SPLIT chunks summed), the rows (BLOCK_B,) of
    K_SIZE activations at p_rows (scaled as ``load_rows`` says)."""
    a = load_rows(p_rows, m_rows, 0, BLOCK_K, K_SPLIT, K_SIZE, p_scale_rows, SCALED)
    if K_SPLIT == 1:
        acc = dot_acc(a, w, acc, UPCAST, TF32)
    else:
        zeros = tl.zeros((K_SPLIT, acc.shape[0], acc.shape[1]), dtype=acc.dtype)
        acc += tl.sum(dot_acc(a, w, zeros, UPCAST, TF32), axis=0)
    return acc


@triton.jit
def streamed_product(p_rows, m_rows, w_ptr, cols, cols_ok, acc, K_SIZE: tl.constexpr, BLOCK_K: tl.constexpr,
                     UPCAST: tl.constexpr, TF32: tl.constexpr, p_scale_rows=None,
                     SCALED: tl.constexpr = False):  # fmt: skip
    """acc + rows @ W[cols, :]^T with W (row-major, K_SIZE columns) read from global memory in BLOCK_K chunks."""
    for k0 in range(0, K_SIZE, BLOCK_K):
        a = load_rows(p_rows, m_rows, k0, BLOCK_K, 1, K_SIZE, p_scale_rows, SCALED)
        acc = dot_acc(a, load_gate_columns(w_ptr, cols, cols_ok, k0, BLOCK_K, 1, K_SIZE), acc, UPCAST, TF32)
    return acc


@triton.jit(do_not_specialize=["phase_begin", "phase_end", "seq_len"])
def lstm_persistent_forward_kernel(
    x_proj_ptr,  # (T, B, D * 4H): x @ W_ih^T of every step, both directions side by side (of layer 0 if LAYERS > 1)
    bias_ptr,  # (G, 4H), accumulator dtype: b_ih + b_hh (only if HAS_BIAS)
    w_hh_ptr,  # (G, 4H, H_OUT), contiguous
    w_hr_ptr,  # (G, H_OUT, H), contiguous (only if HAS_PROJ)
    w_ih_ptr,  # (LAYERS - 1, 4H, H_OUT), contiguous: the input weights of layers 1 .. LAYERS - 1 (only if LAYERS > 1)
    mask_ptr,  # (LAYERS - 1, T, B, H_OUT), input dtype: dropout scale of each layer's output (only if DROPOUT)
    hs_ptr,  # (T + 1, G, B, H_OUT): slot 0 holds h0 on entry; slot s + 1 gets h after step s
    unprojected_ptr,  # (G, B, H), input dtype: o * tanh(c) of the current step (only if HAS_PROJ)
    cs_ptr,  # (T + 1 if SAVE else 2, G, B, H), accumulator dtype: the slot of phase_begin's step holds c on entry
    gates_ptr,  # (T, G, B, 4H), accumulator dtype: i, f, g, o after activation (only if SAVE)
    lengths_ptr,  # (B,) int32 (only if HAS_LENGTHS)
    sync_ptr,  # (batch tiles * D,) int32, zero on entry: one arrival counter per group (only if GRID_SYNC)
    phase_begin,
    phase_end,
    seq_len,
    batch,
    stride_xp_t,
    stride_xp_b,
    HIDDEN: tl.constexpr,
    H_OUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    SAVE: tl.constexpr,
    GRID_SYNC: tl.constexpr,  # more than one program per group: meet at the counter, not only the block barrier
    UPCAST: tl.constexpr,
    TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,  # hidden units per program
    BLOCK_N: tl.constexpr,  # projection columns per program (only if HAS_PROJ)
    BLOCK_K: tl.constexpr,  # reduction over H_out: all of it padded to a power of two if RESIDENT, else the chunk
    BLOCK_M: tl.constexpr,  # reduction of the projection over H, padded to a power of two (RESIDENT and HAS_PROJ)
    K_SPLIT: tl.constexpr,  # reduction chunks spread over warps (RESIDENT only)
    RESIDENT: tl.constexpr,
    LAYERS: tl.constexpr = 1,  # > 1: grid axis 2 is the layer of a one-direction stack run as a wavefront
    DROPOUT: tl.constexpr = False,
):
    i_b = tl.program_id(0)
    i_p = tl.program_id(1)
    # G: grid axis 2, the directions of one layer, or the layers of a stack (one direction). A stack's layer l runs
    # time step s - l at wavefront step s: its input, layer l - 1's output of that time, came one wavefront step
    # earlier. All its programs share one barrier per batch tile.
    i_g = tl.program_id(2)
    n_groups_b = tl.num_programs(0)
    n_p = tl.num_programs(1)
    n_g = tl.num_programs(2)
    stacked: tl.constexpr = LAYERS > 1
    direction = 0 if stacked else i_g
    layer = i_g if stacked else 0
    acc_dtype = cs_ptr.dtype.element_ty
    h_dtype = hs_ptr.dtype.element_ty
    sync = sync_ptr + i_b if stacked else sync_ptr + i_g * n_groups_b + i_b
    meeting = n_p * n_g if stacked else n_p  # programs at each barrier

    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < batch
    o_b64 = o_b.to(tl.int64)
    u0 = i_p * BLOCK_U
    o_u = u0 + tl.arange(0, BLOCK_U)
    m_u = o_u < HIDDEN
    m_bu = m_b[:, None] & m_u[None, :]
    # Contiguous state buffers: (slot, G, B, N) with N = H_OUT, H or 4H.
    hs_slot = n_g.to(tl.int64) * batch * H_OUT
    cs_slot = n_g.to(tl.int64) * batch * HIDDEN
    gates_slot = n_g.to(tl.int64) * batch * (4 * HIDDEN)
    p_hs = hs_ptr + (i_g * batch + o_b64) * H_OUT  # (BLOCK_B,) rows of slot 0
    p_cs = cs_ptr + (i_g * batch + o_b64[:, None]) * HIDDEN + o_u[None, :]
    p_gates = gates_ptr + (i_g * batch + o_b64[:, None]) * (4 * HIDDEN) + o_u[None, :]
    p_xp = x_proj_ptr + o_b64[:, None] * stride_xp_b + direction * (4 * HIDDEN) + o_u[None, :]
    p_m = unprojected_ptr + (i_g * batch + o_b64) * HIDDEN  # (BLOCK_B,) rows
    w_hh = w_hh_ptr + i_g.to(tl.int64) * (4 * HIDDEN * H_OUT)
    w_hr = w_hr_ptr + i_g.to(tl.int64) * (H_OUT * HIDDEN)
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + o_b, mask=m_b, other=0)

    rows, rows_ok = gate_rows(u0, 0, 4 * BLOCK_U, HIDDEN)
    if RESIDENT:
        w_gates = load_gate_columns(w_hh, rows, rows_ok, 0, BLOCK_K, K_SPLIT, H_OUT)
    if stacked:
        # The input weights of layers above the first (their input is the H_out-wide output below); layer 0's input
        # projection came from one GEMM over all steps (x_proj). Layer 0 loads nothing here.
        w_in = w_ih_ptr + (tl.maximum(layer, 1) - 1).to(tl.int64) * (4 * HIDDEN * H_OUT)
        # (Conditions on the program as blocks: Triton's interpreter rejects a block mask and'ed with a scalar.)
        above_rows = (layer + 0 * o_b) > 0
        if RESIDENT:
            w_input = load_gate_columns(w_in, rows, rows_ok & ((layer + 0 * rows) > 0), 0, BLOCK_K, K_SPLIT, H_OUT)
        p_below = hs_ptr + ((tl.maximum(layer, 1) - 1) * batch + o_b64) * H_OUT  # (BLOCK_B,) rows of slot 0
        p_mask = mask_ptr + (tl.maximum(layer, 1) - 1).to(tl.int64) * seq_len * batch * H_OUT + o_b64 * H_OUT
    if HAS_BIAS:
        p_bias = bias_ptr + i_g * (4 * HIDDEN) + o_u
        bias_i = tl.load(p_bias, mask=m_u, other=0.0)[None, :]
        bias_f = tl.load(p_bias + HIDDEN, mask=m_u, other=0.0)[None, :]
        bias_g = tl.load(p_bias + 2 * HIDDEN, mask=m_u, other=0.0)[None, :]
        bias_o = tl.load(p_bias + 3 * HIDDEN, mask=m_u, other=0.0)[None, :]
    if HAS_PROJ:
        # W_hr^T columns of this program's projection outputs: element (m, n) is W_hr[n, m].
        o_n = i_p * BLOCK_N + tl.arange(0, BLOCK_N)
        m_n = o_n < H_OUT
        if RESIDENT:
            w_proj = load_gate_columns(w_hr, o_n.to(tl.int64), m_n, 0, BLOCK_M, 1, HIDDEN)

    # One iteration a (wavefront) step; each of its phases runs when its index is in [phase_begin, phase_end). Every
    # program waits and arrives at every phase, also where its layer has no time step to run (a stack's ramps).
    phases: tl.constexpr = 2 if HAS_PROJ else 1
    wave = phase_begin // phases
    step = wave - layer
    c = tl.load(p_cs + (tl.maximum(step, 0) if SAVE else tl.maximum(step, 0) % 2) * cs_slot, mask=m_bu, other=0.0)
    arrivals = 0
    while wave * phases < phase_end:
        step = wave - layer
        runs = (step >= 0) & (step < seq_len) if stacked else True
        if wave * phases >= phase_begin:
            # Gates of this program's units. x @ W_ih^T, where it was computed before the launch, is this program's
            # own input: loaded before the wait.
            if HAS_LENGTHS:
                active = (step < length)[:, None]
                t = tl.where(direction == 0, step, length - 1 - step)[:, None]
            else:
                active = True
                t = step + direction * (seq_len - 1 - 2 * step)
            p_x = p_xp + t.to(tl.int64) * stride_xp_t
            m_x = m_bu & active
            if stacked:
                steps = step + 0 * o_b
                m_x = m_x & ((layer + 0 * o_b == 0) & (steps >= 0) & (steps < seq_len))[:, None]
            x_i = tl.load(p_x, mask=m_x, other=0.0).to(acc_dtype)
            x_f = tl.load(p_x + HIDDEN, mask=m_x, other=0.0).to(acc_dtype)
            x_g = tl.load(p_x + 2 * HIDDEN, mask=m_x, other=0.0).to(acc_dtype)
            x_o = tl.load(p_x + 3 * HIDDEN, mask=m_x, other=0.0).to(acc_dtype)
            wait(sync, arrivals, GRID_SYNC)

            if runs:
                acc = tl.zeros((BLOCK_B, 4 * BLOCK_U), dtype=acc_dtype)
                if RESIDENT:
                    acc = resident_product(p_hs + step * hs_slot, m_b, w_gates, acc, H_OUT, BLOCK_K, K_SPLIT, UPCAST,
                                           TF32)  # fmt: skip
                else:
                    acc = streamed_product(p_hs + step * hs_slot, m_b, w_hh, rows, rows_ok, acc, H_OUT, BLOCK_K,
                                           UPCAST, TF32)  # fmt: skip
                if stacked:
                    # Layers above the first: the input projection of the layer below's output at this time step
                    # (written one wavefront step ago), through its dropout mask in training.
                    p_in = p_below + (step + 1) * hs_slot
                    p_scale = p_mask + step.to(tl.int64) * batch * H_OUT
                    m_in = m_b & above_rows
                    if RESIDENT:
                        acc = resident_product(p_in, m_in, w_input, acc, H_OUT, BLOCK_K, K_SPLIT, UPCAST, TF32,
                                               p_scale, DROPOUT)  # fmt: skip
                    else:
                        w_rows_ok = rows_ok & ((layer + 0 * rows) > 0)
                        acc = streamed_product(p_in, m_in, w_in, rows, w_rows_ok, acc, H_OUT, BLOCK_K, UPCAST, TF32,
                                               p_scale, DROPOUT)  # fmt: skip
                acc_i, acc_f, acc_g, acc_o = split_gates(acc, BLOCK_B, BLOCK_U)
                acc_i += x_i
                acc_f += x_f
                acc_g += x_g
                acc_o += x_o
                if HAS_BIAS:
                    acc_i += bias_i
                    acc_f += bias_f
                    acc_g += bias_g
                    acc_o += bias_o
                c_prev = c
                gate_i, gate_f, gate_g, gate_o, c, h = cell_forward(acc_i, acc_f, acc_g, acc_o, c_prev)
                if HAS_LENGTHS:
                    # A finished row keeps its cell state and saves zero gates (see the step kernel).
                    c = tl.where(active, c, c_prev)
                    gate_i, gate_f, gate_g, gate_o = zero_unless(active, gate_i, gate_f, gate_g, gate_o)
                tl.store(p_cs + (step + 1 if SAVE else (step + 1) % 2) * cs_slot, c, mask=m_bu)
                if SAVE:
                    p_g = p_gates + step * gates_slot
                    tl.store(p_g, gate_i, mask=m_bu)
                    tl.store(p_g + HIDDEN, gate_f, mask=m_bu)
                    tl.store(p_g + 2 * HIDDEN, gate_g, mask=m_bu)
                    tl.store(p_g + 3 * HIDDEN, gate_o, mask=m_bu)
                if HAS_PROJ:
                    tl.store(p_m[:, None] + o_u[None, :], h.to(h_dtype), mask=m_bu)
                else:
                    tl.store(p_hs[:, None] + (step + 1) * hs_slot + o_u[None, :], h.to(h_dtype), mask=m_bu)
            arrive(sync, GRID_SYNC)
            arrivals += meeting
        if HAS_PROJ:
            if wave * 2 + 1 < phase_end:
                # Projection: this program's columns of h_t from every unit's o * tanh(c_t).
                wait(sync, arrivals, GRID_SYNC)
                if runs:
                    h_cols = tl.zeros((BLOCK_B, BLOCK_N), dtype=acc_dtype)
                    if RESIDENT:
                        h_cols = resident_product(p_m, m_b, w_proj, h_cols, HIDDEN, BLOCK_M, 1, UPCAST, TF32)
                    else:
                        h_cols = streamed_product(
                            p_m, m_b, w_hr, o_n.to(tl.int64), m_n, h_cols, HIDDEN, BLOCK_K, UPCAST, TF32
                        )
                    m_bn = m_b[:, None] & m_n[None, :]
                    tl.store(p_hs[:, None] + (step + 1) * hs_slot + o_n[None, :], h_cols.to(h_dtype), mask=m_bn)
                arrive(sync, GRID_SYNC)
                arrivals += meeting
        wave += 1
