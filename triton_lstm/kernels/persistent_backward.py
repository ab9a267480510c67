"""Persistent backward kernel: one launch walks a layer's steps in reverse, all directions at once (or every layer
of a one-direction stack, as a wavefront in reverse).

Grid (batch tiles, P, G), as the forward, and each program owns the same hidden units and the same slice of W_hh
(the four gate rows of its units, gate columns interleaved: ``gate_tiles``), used transposed: with RESIDENT it is
loaded once and kept on chip, else streamed from L2 every step. At step t a program
  1. sums dL/dh_t of its units: the upstream gradient plus the P partial products that every program left from
     step t + 1 (dL/dh_t = sum over programs q of dG_q(t + 1) @ W_hh[rows of q]),
  2. computes its units' gate gradients dG(t) from the saved gates and cell states (the cell gradient stays in
     registers from step to step) and stores them for the weight gradients,
  3. multiplies dG(t), in the input dtype with fp32 accumulation (as cuDNN does; the cell chain stays fp32), by its
     W_hh slice: its partial product of dL/dh_{t-1} over all H_out columns, written to the step's partial buffer,
and meets the others at one grid barrier a step. The partial products alternate between two slots: a program writes
slot t % 2 at step t after the barrier of step t + 1, which every program reaches only once it has read that slot
(the partials of step t + 2).

With a projection, dL/d(o * tanh(c)) = dL/dh @ W_hr needs all H_out columns of dL/dh_t, so a step has two phases:
each program first sums the partials of BLOCK_N columns into the total dL/dh_t (stored: the projection's weight
gradient reads it), then, after a second barrier, reads all of it and multiplies by its resident W_hr columns.

A stack (LAYERS > 1): grid axis 2 counts the layers from the top (so that the interpreter, which runs that axis
innermost, finishes a layer before the one below), and layer l runs time step T - 1 - (s - (L - 1 - l)) at wavefront
step s. A layer above the first also leaves its partial products of dL/dx_t = dG(t) @ W_ih (its input, the output
of the layer below, through the dropout mask): the layer below adds them, times the mask, to its dL/dh_t at the
next wavefront step. Those alternate between ``ih_slots`` slots (2; one a step under the interpreter, where a layer
finishes every step before the layer below starts).

dL/dh0 is the sum of the partials of step 0 (the launcher adds them up); dL/dc0 is left in slot T % 2 of d_cs. The
weight gradients are left to GEMMs over all steps afterwards, from the stored gate gradients. As in the forward, a
launch runs phases [phase_begin, phase_end): the whole recurrence, or one phase per launch (tests).
"""

import triton
import triton.language as tl

from triton_lstm.kernels.gate_tiles import gate_rows, join_gates
from triton_lstm.kernels.math import cell_backward, dot_acc, dot_split, zero_unless
from triton_lstm.kernels.sync import arrive, wait


@triton.jit
def _gate_rows_tile(w_ptr, rows, rows_ok, k0, BLOCK_K: tl.constexpr, H_OUT: tl.constexpr):
    """W[rows, k0 .. k0 + BLOCK_K) as (rows, BLOCK_K): the right operand of ``gate gradients @ tile``."""
    k = k0 + tl.arange(0, BLOCK_K)[None, :]
    return tl.load(w_ptr + rows[:, None] * H_OUT + k, mask=rows_ok[:, None] & (k < H_OUT), other=0.0)


@triton.jit
def _resident_tiles(w_ptr, u0, rows_ok_extra, HIDDEN: tl.constexpr, H_OUT: tl.constexpr, BLOCK_K: tl.constexpr,
                    K_CHUNK: tl.constexpr, PIECES: tl.constexpr, CHUNKS: tl.constexpr):  # fmt: skip
    """The program's rows of W (its units' four gates) as PIECES x CHUNKS tiles of (K_CHUNK, BLOCK_K), piece-major;
    ``rows_ok_extra`` (a block) switches them off (to zeros) where a program has none."""
    tiles = ()
    for piece in tl.static_range(PIECES):
        piece_rows, piece_ok = gate_rows(u0, piece * K_CHUNK, K_CHUNK, HIDDEN)
        for j in tl.static_range(CHUNKS):
            tile = _gate_rows_tile(w_ptr, piece_rows, piece_ok & rows_ok_extra, j * BLOCK_K, BLOCK_K, H_OUT)
            tiles = tiles + (tile,)
    return tiles


@triton.jit
def _store_share(p_out, d_gates, w_tiles, w_ptr, p_dg_step, u0, m_b, HIDDEN: tl.constexpr, H_OUT: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, K_CHUNK: tl.constexpr, PIECES: tl.constexpr,
                 CHUNKS: tl.constexpr, RESIDENT: tl.constexpr, UPCAST: tl.constexpr, TF32: tl.constexpr):  # fmt: skip
    """Store this program's share of a product over all H_OUT columns: its gate gradients (d_gates, or, where it is
    None, read back in pieces from the rows p_dg_step) times its rows of W, the resident w_tiles or streamed from
    w_ptr."""
    acc_dtype = p_out.dtype.element_ty
    w_dtype = w_ptr.dtype.element_ty
    for j in tl.static_range(CHUNKS):
        o_cols = j * BLOCK_K + tl.arange(0, BLOCK_K)
        share = tl.zeros((BLOCK_B, BLOCK_K), dtype=acc_dtype)
        for piece in tl.static_range(PIECES):
            piece_rows, piece_ok = gate_rows(u0, piece * K_CHUNK, K_CHUNK, HIDDEN)
            if d_gates is None:
                m_piece = m_b[:, None] & piece_ok[None, :]
                piece_gates = tl.load(p_dg_step + piece_rows[None, :], mask=m_piece, other=0.0,
                                      cache_modifier=".cg").to(w_dtype)  # fmt: skip
            else:
                piece_gates = d_gates
            if RESIDENT:
                w_tile = w_tiles[piece * CHUNKS + j]
            else:
                w_tile = _gate_rows_tile(w_ptr, piece_rows, piece_ok, j * BLOCK_K, BLOCK_K, H_OUT)
            share = dot_acc(piece_gates, w_tile, share, UPCAST, TF32)
        tl.store(p_out + o_cols[None, :], share, mask=m_b[:, None] & (o_cols[None, :] < H_OUT))


@triton.jit
def _sum_partials(acc, p_partials, program_stride, mask, PROGRAMS: tl.constexpr):
    """acc + the PROGRAMS partial products at p_partials + q * program_stride, added in program order (the result
    does not depend on timing). Unrolled, so that every load is issued before the first sum waits on one."""
    for q in tl.static_range(PROGRAMS):
        acc += tl.load(p_partials + q * program_stride, mask=mask, other=0.0, cache_modifier=".cg")
    return acc


@triton.jit(do_not_specialize=["phase_begin", "phase_end", "seq_len", "ih_slots"])
def lstm_persistent_backward_kernel(
    gates_ptr,  # (T, G, B, 4H), accumulator dtype: i, f, g, o after activation
    cs_ptr,  # (T + 1, G, B, H), accumulator dtype: slot 0 c0, slot s + 1 c after step s
    w_hh_ptr,  # (G, 4H, H_OUT), contiguous
    w_hr_ptr,  # (G, H_OUT, H), contiguous (only if HAS_PROJ)
    w_ih_ptr,  # (LAYERS - 1, 4H, H_OUT), contiguous: input weights of the layers above the first (LAYERS > 1)
    mask_ptr,  # (LAYERS - 1, T, B, H_OUT), input dtype: dropout scale of each layer's output (only if DROPOUT)
    d_hs_ptr,  # (T, G, B, H_OUT), accumulator dtype: upstream dL/dh of each step; with HAS_PROJ becomes the total
    d_gates_ptr,  # (T, G, B, 4H), accumulator dtype, out: gate pre-activation gradients
    d_cs_ptr,  # (2, G, B, H), accumulator dtype: dL/dc carried between launches (slot 0: dL/dc_n on entry)
    partials_ptr,  # (2, P, G, B, H_OUT), accumulator dtype: each program's share of dL/dh of the step before
    ih_partials_ptr,  # (ih_slots, P, G, B, H_OUT), accumulator dtype: shares of dL/dx of a layer (LAYERS > 1)
    lengths_ptr,  # (B,) int32 (only if HAS_LENGTHS)
    sync_ptr,  # (batch tiles * G,) int32, zero on entry (only if GRID_SYNC); one per batch tile for a stack
    phase_begin,
    phase_end,
    seq_len,
    batch,
    ih_slots,
    HIDDEN: tl.constexpr,
    H_OUT: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    GRID_SYNC: tl.constexpr,
    UPCAST: tl.constexpr,
    TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,  # hidden units per program
    BLOCK_N: tl.constexpr,  # columns of dL/dh each program sums (only if HAS_PROJ)
    BLOCK_K: tl.constexpr,  # columns of H_out per chunk of the partial products (and of the projection)
    K_CHUNK: tl.constexpr,  # rows of the gate gradients per piece of the partial products (4U, or 16)
    PROGRAMS: tl.constexpr,  # P
    RESIDENT: tl.constexpr,
    LAYERS: tl.constexpr = 1,  # > 1: grid axis 2 is a stack's layer (from the top), run as a wavefront
    DROPOUT: tl.constexpr = False,
):
    i_b = tl.program_id(0)
    i_p = tl.program_id(1)
    i_g = tl.program_id(2)
    n_groups_b = tl.num_programs(0)
    n_p = tl.num_programs(1)
    n_g = tl.num_programs(2)
    stacked: tl.constexpr = LAYERS > 1
    # A stack's state buffers are indexed by layer, counted from the bottom; its grid axis counts from the top.
    layer = LAYERS - 1 - i_g if stacked else i_g
    lag = i_g if stacked else 0  # wavefront steps before this group's first step
    acc_dtype = d_hs_ptr.dtype.element_ty
    sync = sync_ptr + i_b if stacked else sync_ptr + i_g * n_groups_b + i_b
    meeting = n_p * n_g if stacked else n_p  # programs at each barrier

    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_b = o_b < batch
    o_b64 = o_b.to(tl.int64)
    u0 = i_p * BLOCK_U
    o_u = u0 + tl.arange(0, BLOCK_U)
    m_u = o_u < HIDDEN
    m_bu = m_b[:, None] & m_u[None, :]
    h_slot = n_g.to(tl.int64) * batch * H_OUT
    c_slot = n_g.to(tl.int64) * batch * HIDDEN
    g_slot = n_g.to(tl.int64) * batch * (4 * HIDDEN)
    p_dh = d_hs_ptr + (layer * batch + o_b64[:, None]) * H_OUT  # rows of step 0
    p_cu = cs_ptr + (layer * batch + o_b64[:, None]) * HIDDEN + o_u[None, :]
    p_dcu = d_cs_ptr + (layer * batch + o_b64[:, None]) * HIDDEN + o_u[None, :]
    p_gu = gates_ptr + (layer * batch + o_b64[:, None]) * (4 * HIDDEN) + o_u[None, :]
    p_dg_rows = d_gates_ptr + (layer * batch + o_b64[:, None]) * (4 * HIDDEN)  # rows of step 0
    p_dgu = p_dg_rows + o_u[None, :]
    # partials[slot, q, g, b, n]: one program's share is (G, B, H_OUT), one slot P of them.
    program_stride = h_slot
    partial_slot = PROGRAMS * h_slot
    p_part = partials_ptr + (layer * batch + o_b64[:, None]) * H_OUT  # rows of slot 0, program 0
    w_hh = w_hh_ptr + layer.to(tl.int64) * (4 * HIDDEN * H_OUT)
    w_hr = w_hr_ptr + layer.to(tl.int64) * (H_OUT * HIDDEN)
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + o_b, mask=m_b, other=0)

    # The partial products multiply the gate gradients (4U interleaved columns) in K_CHUNK-row pieces by W tiles of
    # BLOCK_K columns: one piece from registers on tensor cores; FMA and fp64 products (whose operands Triton holds
    # whole in registers) read pieces of 16 back from the gate gradients this program just stored.
    chunks: tl.constexpr = triton.cdiv(H_OUT, BLOCK_K)
    pieces: tl.constexpr = 4 * BLOCK_U // K_CHUNK
    if RESIDENT:
        w_tiles = _resident_tiles(w_hh, u0, tl.arange(0, K_CHUNK) >= 0, HIDDEN, H_OUT, BLOCK_K, K_CHUNK, pieces, chunks)
    if stacked:
        # Conditions on the program as blocks: Triton's interpreter rejects a block mask and'ed with a scalar.
        above = layer > 0  # this layer's input is the layer below's output: it leaves shares of dL/dx
        below = layer < LAYERS - 1  # the layer above left shares of dL/dh for this one
        w_in = w_ih_ptr + (tl.maximum(layer, 1) - 1).to(tl.int64) * (4 * HIDDEN * H_OUT)
        if RESIDENT:
            w_in_tiles = _resident_tiles(w_in, u0, (layer + 0 * tl.arange(0, K_CHUNK)) > 0, HIDDEN, H_OUT, BLOCK_K,
                                         K_CHUNK, pieces, chunks)  # fmt: skip
        p_ih_out = ih_partials_ptr + (layer * batch + o_b64[:, None]) * H_OUT + i_p * program_stride
        p_ih_in = ih_partials_ptr + (tl.minimum(layer + 1, LAYERS - 1) * batch + o_b64[:, None]) * H_OUT
        p_mask = mask_ptr + (tl.minimum(layer, LAYERS - 2) * seq_len * batch + o_b64[:, None]) * H_OUT
        ih_slot = PROGRAMS * h_slot
    if HAS_PROJ:
        o_n = i_p * BLOCK_N + tl.arange(0, BLOCK_N)
        m_bn = m_b[:, None] & (o_n[None, :] < H_OUT)
        # W_hr columns of this program's units, resident in chunks of H_out: element (k, u) is W_hr[k, u].
        w_proj = ()
        for j in tl.static_range(chunks):
            o_w = j * BLOCK_K + tl.arange(0, BLOCK_K)[:, None]
            w_cols = tl.load(w_hr + o_w * HIDDEN + o_u[None, :], mask=(o_w < H_OUT) & m_u[None, :], other=0.0)
            w_proj = w_proj + (w_cols,)

    # One iteration a (wavefront) step, in reverse; each of its phases (reduce, then gates) runs when its index is in
    # [phase_begin, phase_end). Every program waits and arrives at every phase, also where its layer has no time step
    # to run (a stack's ramps).
    phases: tl.constexpr = 2 if HAS_PROJ else 1
    wave = phase_begin // phases
    done = tl.minimum(tl.maximum(wave - lag, 0), seq_len)  # steps of this group finished before this launch
    c = tl.load(p_cu + (seq_len - done) * c_slot, mask=m_bu, other=0.0)
    d_c = tl.load(p_dcu + (done % 2) * c_slot, mask=m_bu, other=0.0)
    arrivals = 0
    while wave * phases < phase_end:
        done = wave - lag
        step = seq_len - 1 - done
        runs = (done >= 0) & (done < seq_len) if stacked else True
        m_run = m_bu
        if stacked:
            dones = done + 0 * o_b
            m_run = m_bu & ((dones >= 0) & (dones < seq_len))[:, None]
        # The partials of step + 1 exist except at the first step of the recurrence.
        p_prior = p_part + ((step + 1) % 2) * partial_slot
        if HAS_PROJ:
            if wave * 2 >= phase_begin:
                # Reduce phase: the total dL/dh_t of this program's columns.
                p_cols = p_dh + step * h_slot + o_n[None, :]
                wait(sync, arrivals, GRID_SYNC)
                if runs:
                    d_h = tl.load(p_cols, mask=m_bn, other=0.0)
                    if step < seq_len - 1:
                        d_h = _sum_partials(d_h, p_prior + o_n[None, :], program_stride, m_bn, PROGRAMS)
                    if stacked:
                        if below:
                            from_above = _sum_partials(tl.zeros_like(d_h), p_ih_in + (step % ih_slots) * ih_slot
                                                       + o_n[None, :], program_stride, m_bn, PROGRAMS)  # fmt: skip
                            if DROPOUT:
                                p_scale = p_mask + step.to(tl.int64) * batch * H_OUT + o_n[None, :]
                                from_above *= tl.load(p_scale, mask=m_bn, other=0.0).to(acc_dtype)
                            d_h += from_above
                    tl.store(p_cols, d_h, mask=m_bn)
                arrive(sync, GRID_SYNC)
                arrivals += meeting
        if wave * phases + phases - 1 >= phase_begin and wave * phases + phases - 1 < phase_end:
            # This program's own inputs of the step, loaded before the wait (nothing where its layer has no step).
            p_g = p_gu + step * g_slot
            gate_i = tl.load(p_g, mask=m_run, other=0.0)
            gate_f = tl.load(p_g + HIDDEN, mask=m_run, other=0.0)
            gate_g = tl.load(p_g + 2 * HIDDEN, mask=m_run, other=0.0)
            gate_o = tl.load(p_g + 3 * HIDDEN, mask=m_run, other=0.0)
            c_prev = tl.load(p_cu + step * c_slot, mask=m_run, other=0.0)
            if not HAS_PROJ:
                d_m = tl.load(p_dh + step * h_slot + o_u[None, :], mask=m_run, other=0.0)
            wait(sync, arrivals, GRID_SYNC)

            if runs:
                if HAS_LENGTHS:
                    # Past a row's length, f = 1 passes dc on unchanged (the gate gradients are masked to zero below).
                    active = (step < length)[:, None]
                    gate_f = tl.where(active, gate_f, 1.0)
                if HAS_PROJ:
                    # dL/d(o * tanh(c)) = dL/dh_t @ W_hr, from the total dL/dh_t that the reduce phase left, kept in
                    # the accumulator's precision (a sum of many products, not an input-dtype value).
                    d_m = tl.zeros((BLOCK_B, BLOCK_U), dtype=acc_dtype)
                    for j in tl.static_range(chunks):
                        o_k = j * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
                        d_h = tl.load(p_dh + step * h_slot + o_k, mask=m_b[:, None] & (o_k < H_OUT), other=0.0,
                                      cache_modifier=".cg")  # fmt: skip
                        d_m = dot_split(d_h, w_proj[j], d_m, UPCAST, TF32)
                else:
                    if step < seq_len - 1:
                        d_m = _sum_partials(d_m, p_prior + o_u[None, :], program_stride, m_bu, PROGRAMS)
                    if stacked:
                        if below:
                            from_above = _sum_partials(tl.zeros_like(d_m), p_ih_in + (step % ih_slots) * ih_slot
                                                       + o_u[None, :], program_stride, m_bu, PROGRAMS)  # fmt: skip
                            if DROPOUT:
                                p_scale = p_mask + step.to(tl.int64) * batch * H_OUT + o_u[None, :]
                                from_above *= tl.load(p_scale, mask=m_bu, other=0.0).to(acc_dtype)
                            d_m += from_above
                da_i, da_f, da_g, da_o, d_c = cell_backward(d_m, d_c, gate_i, gate_f, gate_g, gate_o, c, c_prev)
                if HAS_LENGTHS:
                    da_i, da_f, da_g, da_o = zero_unless(active, da_i, da_f, da_g, da_o)
                p_dg = p_dgu + step * g_slot
                tl.store(p_dg, da_i, mask=m_bu)
                tl.store(p_dg + HIDDEN, da_f, mask=m_bu)
                tl.store(p_dg + 2 * HIDDEN, da_g, mask=m_bu)
                tl.store(p_dg + 3 * HIDDEN, da_o, mask=m_bu)
                d_c = d_c * gate_f
                tl.store(p_dcu + ((done + 1) % 2) * c_slot, d_c, mask=m_bu)
                c = c_prev

                # This program's share of dL/dh_{t-1}: its gate gradients through its rows of W_hh, all columns
                # (and for a layer above the first, of dL/dx_t through its rows of W_ih).
                if pieces == 1 and acc_dtype != tl.float64:
                    d_gates = join_gates(da_i, da_f, da_g, da_o, BLOCK_B, BLOCK_U).to(w_hh_ptr.dtype.element_ty)
                else:
                    d_gates = None  # read back in pieces by _store_share
                    # (Also fp64 in one piece: Triton 3.6 cannot feed a reshaped fp64 tensor to an MMA.) The stores
                    # above are this program's own: a block barrier makes them visible to all its threads.
                    tl.debug_barrier()
                p_dg_step = p_dg_rows + step * g_slot
                p_out = p_part + (step % 2) * partial_slot + i_p * program_stride
                if RESIDENT:
                    _store_share(p_out, d_gates, w_tiles, w_hh, p_dg_step, u0, m_b, HIDDEN, H_OUT, BLOCK_B, BLOCK_K,
                                 K_CHUNK, pieces, chunks, RESIDENT, UPCAST, TF32)  # fmt: skip
                else:
                    _store_share(p_out, d_gates, (), w_hh, p_dg_step, u0, m_b, HIDDEN, H_OUT, BLOCK_B, BLOCK_K,
                                 K_CHUNK, pieces, chunks, RESIDENT, UPCAST, TF32)  # fmt: skip
                if stacked:
                    if above:
                        p_ih = p_ih_out + (step % ih_slots) * ih_slot
                        if RESIDENT:
                            _store_share(p_ih, d_gates, w_in_tiles, w_in, p_dg_step, u0, m_b, HIDDEN, H_OUT, BLOCK_B,
                                         BLOCK_K, K_CHUNK, pieces, chunks, RESIDENT, UPCAST, TF32)  # fmt: skip
                        else:
                            _store_share(p_ih, d_gates, (), w_in, p_dg_step, u0, m_b, HIDDEN, H_OUT, BLOCK_B, BLOCK_K,
                                         K_CHUNK, pieces, chunks, RESIDENT, UPCAST, TF32)  # fmt: skip
            arrive(sync, GRID_SYNC)
            arrivals += meeting
        wave += 1
