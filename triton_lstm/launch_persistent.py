"""Host launchers of the persistent kernels: one launch per layer and direction set runs every time step.

The grid is (batch tiles, P, D): the P programs of a group split the hidden units and synchronise at every step,
so all of them must be resident on the GPU at once. ``plan`` sizes the grid and the tiles to the device (or gives the
reason it cannot), and the launch is cooperative, so a grid that does not fit fails instead of deadlocking. Under
the interpreter programs run one after another: each group gets one program that owns every hidden unit; a plan
with ``stepped`` (tests) instead launches P programs once per phase, the launch boundary standing in for the barrier.
"""

from dataclasses import dataclass

import torch
import triton

from triton_lstm import launch, precision, tuning

# Reduction chunk when W_hh is streamed from L2, by element size: fp16 at H = 1024 took 13.0 us a step with 256,
# 15.5 with 128, 18.8 with 64; float32 81.7 (256), 83.7 (128), 85.9 (64), but at 256 its tiles need more shared
# memory than a block may have (H200, python -m bench.persistent_tiles, bench/results/h200-issue4/run2-tiles.csv,
# with the kernels of that time). float64 (untimed): 32, as 64 spills 4 bytes on sm_80 with triton 3.6 (aot report,
# H = 1024 with a projection).
STREAM_K = {2: 256, 4: 128, 8: 32}
# A stacked layer's chunk in exact float32, which streams W_ih too (untimed; registers, see plan_for).
STACKED_FMA_STREAM_K = 64
# The activations a program loads each step from other programs (forward: h_{t-1}, BLOCK_B x H_out in the input
# dtype; backward: the partial products of its units, BLOCK_B x H in fp32, all loads issued before the first add) are
# held in registers: at most this many bytes per thread (64 registers), so that the rest of the step has room. The
# warps of a program follow from it (4 or 8), and the batch tile is capped where 8 warps would not do. (16 warps
# leave 128 registers a thread: the fp64 backward at H = 1024 then spills 132 bytes on sm_80, aot report.)
TILE_BYTES_PER_THREAD = 256
WARPS = (4, 8)
# Shared memory a block keeps besides the named tiles (allocation alignment); Triton's layout conversions reuse the
# activation tile's space once the product has read it (aot report: 98,304 bytes for H = 1024 fp16 with 8 units a
# program, exactly the W_hh slice and the h tile).
SHARED_MARGIN = 1024
# Most hidden units a program takes on: past this, too few programs share each step's work for the persistent kernel
# to pay (the limit of the tiles timed on the H200, bench/results/h200-issue4/run2-tiles.csv); the per-step kernel
# runs instead.
MAX_UNITS = 128
# Shared memory one block may use (opt-in maximum) where torch does not report it: A100 (sm_80), H100/H200 (sm_90).
SHARED_BYTES = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}
# Columns of H_out per chunk of the backward's products (its partial products of dL/dh_{t-1}, and dL/dh @ W_hr):
# 128 where they run on tensor cores. Exact float32 FMA products hold every K of a chunk in registers (aot report,
# H = 1024, 8 warps, triton 3.6 and 3.9): 64 with W_hh resident (none spilled on sm_90; 4 bytes with 32 on 3.9), 32
# where W_hh streams (8 bytes spilled with 64 on sm_80, 3.9) or with a projection (4 bytes with 64 at P = 256, sm_90).
PARTIAL_CHUNK = {"tensor cores": 128, "fma, resident": 64, "fma": 32}


@dataclass(frozen=True)
class DeviceFacts:
    """What the plan needs to know of a GPU."""

    programs: int  # programs resident at once: one per SM, which every plan's resources allow
    arch: int  # compute capability as 10 * major + minor
    shared_bytes: int  # shared memory one block may use


@dataclass(frozen=True)
class Plan:
    """Tiles and grid of one persistent launch (the forward's or the backward's)."""

    block_b: int  # batch rows per program
    block_u: int  # hidden units per program
    block_n: int  # projection columns per program (forward: of h; backward: of the summed dL/dh)
    block_k: int  # forward: the reduction over H_out (all of it if resident, else a chunk); backward: partial chunk
    block_m: int  # forward: the projection's reduction over H, padded (unused by the backward)
    k_split: int  # forward: reduction chunks spread over warps
    resident: bool  # W_hh (and W_hr) loaded once and kept on chip, else streamed from L2 every step
    programs: int  # P: programs per (batch tile, direction) group
    batch_tiles: int
    num_warps: int
    k_chunk: int = 0  # backward: gate-gradient rows per piece of its partial products (0: all 4 x block_u at once)
    stepped: bool = False  # one launch per phase (tests), the launch boundary standing in for the barrier

    def meta(self, backward: bool) -> dict:
        """The kernel's tile arguments."""
        meta = {"BLOCK_B": self.block_b, "BLOCK_U": self.block_u, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k,
                "RESIDENT": self.resident}  # fmt: skip
        if backward:
            meta.update(PROGRAMS=self.programs, K_CHUNK=self.k_chunk or 4 * self.block_u)
        else:
            meta.update(BLOCK_M=self.block_m, K_SPLIT=self.k_split)
        return meta


def device_facts(device: torch.device) -> DeviceFacts:
    properties = torch.cuda.get_device_properties(device)
    arch = 10 * properties.major + properties.minor
    shared = getattr(properties, "shared_memory_per_block_optin", None) or SHARED_BYTES.get(arch, 101_376)
    return DeviceFacts(properties.multi_processor_count, arch, shared)


def plan(hidden: int, h_out: int, batch: int, num_directions: int, dtype: torch.dtype, device,
         *, backward: bool = False, layers: int = 1) -> Plan | str:  # fmt: skip
    """Tiles and grid for these sizes on ``device`` (of the backward kernel with ``backward``), or a string saying
    why the persistent kernel cannot run. ``layers`` > 1: a stack in one launch (``launch_stack``), whose layers
    take the place of the directions."""
    facts = None if tuning.INTERPRETED else device_facts(device)
    tf32 = facts is not None and precision.use_tf32(dtype, torch.device(device), facts.arch)
    return plan_for(
        hidden, h_out, batch, num_directions, dtype, facts, backward=backward, tf32=tf32, stacked=layers > 1
    )


def _pow2(n: int, floor: int = 16) -> int:
    # tl.dot needs every dimension >= 16; tensors are powers of two.
    return max(floor, triton.next_power_of_2(n))


def shared_bytes(hidden: int, h_out: int, element: int, block_b: int, block_u: int, block_n: int,
                 *, backward: bool, stacked: bool = False) -> int:  # fmt: skip
    """Shared memory of a resident program: the W_hh slice and the activation tile multiplied with it (and the same
    for the projection, and for the W_ih slice of a stacked layer). An estimate, which the resource report checks
    against the compiled kernels (aot)."""
    k_pad, h_pad = _pow2(h_out), _pow2(hidden)
    slice_bytes = 4 * block_u * k_pad * element * (2 if stacked else 1)
    if not backward:
        tiles = slice_bytes + block_b * k_pad * element * (2 if stacked else 1)  # W slices, h_{t-1} (and the input)
        if h_out != hidden:
            tiles += (block_n + block_b) * h_pad * element  # W_hr^T columns, o * tanh(c_t)
    else:
        tiles = slice_bytes + block_b * 4 * block_u * element  # W_hh slice, gate gradients
        if h_out != hidden:
            tiles += (block_u * element + block_b * 4) * k_pad  # W_hr columns, dL/dh_t (accumulator dtype)
    return tiles + SHARED_MARGIN


def plan_for(hidden: int, h_out: int, batch: int, num_directions: int, dtype: torch.dtype, facts: DeviceFacts | None,
             *, backward: bool = False, tf32: bool = False, stacked: bool = False) -> Plan | str:  # fmt: skip
    """``plan`` for a GPU described by ``facts`` (None: the interpreter); ``tf32``: float32 products in TF32;
    ``stacked``: a stack's layers in one launch, ``num_directions`` counting its layers."""
    element = torch.finfo(dtype).bits // 8
    tensor_cores = dtype != torch.float32 or tf32
    k_pad, h_pad = _pow2(h_out), _pow2(hidden)
    projected = h_out != hidden
    # The backward's dL/d(o * tanh c) = dL/dh @ W_hr[:, units] is a product with N = units per program.
    min_units = 16 if projected else 4
    if facts is None:
        units = max(min_units, triton.next_power_of_2(hidden))
        return Plan(block_b=16, block_u=units, block_n=_pow2(h_out), block_k=min(k_pad, 64) if backward else k_pad,
                    block_m=h_pad, k_split=2 if k_pad >= 32 else 1, resident=True, programs=1,
                    batch_tiles=triton.cdiv(batch, 16), num_warps=4)  # fmt: skip
    # Bytes a program loads from the others each step, per batch row: h_{t-1} (and o * tanh(c_t) with a projection),
    # or the partial products (with a projection the summed dL/dh) in the accumulator dtype.
    accumulator = 8 if dtype == torch.float64 else 4
    if backward:
        row_bytes = (h_out if projected else hidden) * accumulator
    else:
        row_bytes = (max(k_pad, h_pad) if projected else k_pad) * element
    # Batch rows per program: as many as the batch has, while those loads fit the registers of the most warps.
    most = TILE_BYTES_PER_THREAD * 32 * WARPS[-1]
    block_b = min(_pow2(batch), max(16, 1 << (most // row_bytes).bit_length() - 1))
    batch_tiles = triton.cdiv(batch, block_b)
    # Units per program: the fewest that let every program be resident at once, so that each program's share of the
    # step (and of W_hh, kept on chip) is as small as the GPU allows.
    units = min_units
    while batch_tiles * triton.cdiv(hidden, units) * num_directions > facts.programs:
        units *= 2
        if units > min(h_pad, MAX_UNITS):
            return (
                f"{batch_tiles} batch tiles x {num_directions} directions x hidden_size={hidden} need more than the "
                f"{facts.programs} co-resident programs of this GPU"
            )
    programs = triton.cdiv(hidden, units)
    block_n = _pow2(triton.cdiv(h_out, programs), 16 if not backward else 1)
    num_warps = next((w for w in WARPS if block_b * row_bytes <= TILE_BYTES_PER_THREAD * 32 * w), WARPS[-1])
    if backward and projected:
        # Its two phases' products and partial sums need more registers than its loads (aot report, H = 1024 with a
        # projection of 256: 4 warps spill up to 9.8 KB in float32 and a few bytes in half precision; 8 do not).
        num_warps = max(num_warps, 8)
    estimate = shared_bytes(hidden, h_out, element, block_b, units, block_n, backward=backward, stacked=stacked)
    resident = estimate <= facts.shared_bytes
    k_chunk = 0
    if backward:
        products = "tensor cores" if tensor_cores else ("fma, resident" if resident and not projected else "fma")
        block_k = min(k_pad, PARTIAL_CHUNK[products])
        k_split = 1
        if not tensor_cores or dtype == torch.float64:
            # FMA (and fp64) products hold their operands whole in registers: pieces of 16 gate-gradient rows (aot
            # report: 32 units a program spill up to 26 KB in float32 and 18 KB in fp64 in one piece).
            k_chunk = min(16, 4 * units)
    else:
        block_k = k_pad if resident else STREAM_K[element]
        # Warps share the reduction in halves (two chains of dependent MMAs instead of one twice as long), except
        # for a 64-row batch tile, whose plain product is a Hopper wgmma; four parts spill on sm_90 (aot report).
        k_split = 2 if resident and block_b < 64 and k_pad >= 64 and not stacked else 1
        if stacked:
            # A stacked layer's two products (W_hh and W_ih), aot report at H = 512, B = 16 on triton 3.6 and 3.9:
            # resident, 8 warps and no split (4 warps split spill up to 136 bytes in fp16 on 3.6, and 8 warps no
            # split none); streamed, the default warps, and exact float32 in chunks of 64 (12 bytes spilled with
            # 128 on sm_80, 3.6; none with 64).
            k_split = 1
            if resident:
                num_warps = max(num_warps, 8)
            elif not tensor_cores:
                block_k = min(block_k, STACKED_FMA_STREAM_K)
    return Plan(block_b, units, block_n, block_k, h_pad, k_split, resident, programs, batch_tiles, num_warps, k_chunk)


def launch_options(tiles: Plan) -> dict:
    options = {"num_warps": tiles.num_warps, "num_stages": 1}
    if not tuning.INTERPRETED:
        options["launch_cooperative_grid"] = True
    return options


def phase_ranges(phases: int, tiles: Plan):
    """(begin, end) of each launch: all phases at once, or one at a time when stepped."""
    return [(p, p + 1) for p in range(phases)] if tiles.stepped else [(0, phases)]


def grid_sync(tiles: Plan, layers: int = 1) -> bool:
    """Whether the programs of a launch meet at a counter: more than one program depends on another's output within
    the launch. The interpreter runs programs one after another, in grid order, the layers' axis innermost."""
    return tiles.programs * layers > 1 and not tiles.stepped and not tuning.INTERPRETED


def persistent_forward(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths=None, *, save: bool, plan: Plan | None = None):
    """Same contract as ``launch.step_forward``, with one kernel launch for the whole sequence. ``plan`` replaces the
    planned tiles (tests, tile timings)."""
    seq_len, batch, _ = x.shape
    num_directions, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4
    buffers = launch.prepare_forward(x, h0, c0, w_ih, bias, hidden, save=save)
    if batch == 0:
        return launch.finish_forward(buffers, lengths, x.dtype)
    tiles = plan or _planned(hidden, h_out, batch, num_directions, x.dtype, x.device, backward=False)
    unprojected = (
        torch.empty(num_directions, batch, hidden, dtype=x.dtype, device=x.device) if w_hr is not None else None
    )
    grid = (tiles.batch_tiles, tiles.programs, num_directions)
    phases = seq_len * (2 if w_hr is not None else 1)
    for begin, end in phase_ranges(phases, tiles):
        sync = torch.zeros(tiles.batch_tiles * num_directions, dtype=torch.int32, device=x.device)
        tuning.persistent_forward_kernel[grid](
            buffers.x_proj, buffers.bias if buffers.bias is not None else buffers.cs, w_hh.contiguous(),
            w_hr.contiguous() if w_hr is not None else w_hh, w_hh, buffers.hs, buffers.hs,
            unprojected if unprojected is not None else buffers.hs, buffers.cs, buffers.gates,
            lengths if lengths is not None else sync, sync,
            begin, end, seq_len, batch, buffers.x_proj.stride(0), buffers.x_proj.stride(1),
            HIDDEN=hidden, H_OUT=h_out, HAS_BIAS=buffers.bias is not None, HAS_PROJ=w_hr is not None,
            HAS_LENGTHS=lengths is not None, SAVE=save, GRID_SYNC=grid_sync(tiles),
            UPCAST=launch.upcast_dot(x.dtype), TF32=precision.use_tf32(x.dtype, x.device),
            **tiles.meta(backward=False), **launch_options(tiles),
        )  # fmt: skip
    return launch.finish_forward(buffers, lengths, x.dtype)


def persistent_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, saved, lengths=None, *,
                        plan: Plan | None = None):  # fmt: skip
    """Same contract as ``launch.step_backward``, with one kernel launch for the whole recurrence."""
    seq_len, batch, _ = x.shape
    num_directions, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4
    d_hs, d_gates = launch.prepare_backward(grad_output, grad_h_n, lengths, hidden)
    acc_dtype = d_gates.dtype
    d_cs = torch.empty(2, num_directions, batch, hidden, dtype=acc_dtype, device=x.device)
    d_cs[0] = grad_c_n
    if batch == 0:
        d_h0 = torch.zeros(num_directions, batch, h_out, dtype=acc_dtype, device=x.device)
    else:
        tiles = plan or _planned(hidden, h_out, batch, num_directions, x.dtype, x.device, backward=True)
        partials = torch.empty(2, tiles.programs, num_directions, batch, h_out, dtype=acc_dtype, device=x.device)
        grid = (tiles.batch_tiles, tiles.programs, num_directions)
        phases = seq_len * (2 if w_hr is not None else 1)
        for begin, end in phase_ranges(phases, tiles):
            sync = torch.zeros(tiles.batch_tiles * num_directions, dtype=torch.int32, device=x.device)
            tuning.persistent_backward_kernel[grid](
                saved.gates, saved.cs, w_hh.contiguous(), w_hr.contiguous() if w_hr is not None else w_hh, w_hh, d_hs,
                d_hs, d_gates, d_cs, partials, partials, lengths if lengths is not None else sync, sync, begin, end,
                seq_len, batch, 2,
                HIDDEN=hidden, H_OUT=h_out, HAS_PROJ=w_hr is not None, HAS_LENGTHS=lengths is not None,
                GRID_SYNC=grid_sync(tiles), UPCAST=launch.upcast_dot(x.dtype),
                TF32=precision.use_tf32(x.dtype, x.device), **tiles.meta(backward=True), **launch_options(tiles),
            )  # fmt: skip
        # Step 0 left its partial products of dL/dh0 in slot 0.
        d_h0 = partials[0].sum(dim=0)
    d_x, d_w_ih, d_w_hh, d_bias, d_w_hr = launch.weight_gradients(d_gates, d_hs, x, w_ih, w_hr, saved, lengths)
    return d_x, d_h0, d_cs[seq_len % 2], d_w_ih, d_w_hh, d_bias, d_w_hr


def _planned(hidden, h_out, batch, num_directions, dtype, device, *, backward: bool) -> Plan:
    planned = plan(hidden, h_out, batch, num_directions, dtype, device, backward=backward)
    if isinstance(planned, str):
        raise RuntimeError(f"triton_lstm: kernel='persistent' cannot run this configuration: {planned}")
    return planned
