"""Host launchers of the persistent kernels: one launch per layer and direction set runs every time step.

The grid is (batch tiles, P, D): the P programs of a group split the hidden units and synchronise at every step,
so all of them must be resident on the GPU at once. ``plan`` sizes the grid to the device (or gives the reason it
cannot), and the launch is cooperative, so a grid that does not fit fails instead of deadlocking. Under the
interpreter programs run one after another: each group gets one program that loops over all unit tiles.
"""

from dataclasses import dataclass

import torch
import triton

from triton_lstm import launch, tuning

# The tiles below were chosen from timings of every candidate on an H200 (python -m bench.persistent_tiles, B = 16,
# H in {256, 1024}, fp16 and fp32, bench/results/): microseconds per step of the best and of the next tiling.
# W_hh stays on chip for the whole sequence (HOIST_W) only in 16-bit types and while the reduction over H_out is one
# chunk of at most this many inputs: fp16 at H = 256 took 5.5 us a step hoisted, 6.3 streamed; float32 took 39 us
# hoisted, 24 streamed in chunks of 128 (its exact-fp32 products run on FMA units, where the large on-chip tile
# costs more than the L2 reads it saves).
HOIST_MAX_K = 256
# Reduction chunk when W_hh is streamed from L2, by element size: fp16 at H = 1024 took 13.0 us a step with 256,
# 15.5 with 128, 18.8 with 64; float32 81.7 (256), 83.7 (128), 85.9 (64), but at 256 its tiles of 64 units need
# more shared memory than a block may have.
STREAM_K = {2: 256, 4: 128, 8: 64}


# The backward reduces over hidden units in chunks of this many (its tiles are chosen separately below), by GPU
# generation: 64 on sm_90 (the chunk timed on an H200); 16 below: on sm_80, where Triton 3.9 turns LLVM's SLP
# vectorizer off, ptxas spills 8 bytes at H = 768, B = 1 in fp16 with chunks of 64 and 20 bytes in bf16 with 32
# (aot report); 16 compiles without spills on triton 3.6 and 3.9 for every dtype, but has not been timed.
def backward_chunk(arch: int) -> int:
    return 64 if arch >= 90 else 16


# Units per program, in order of preference (tl.dot needs every dimension >= 16); more units per program means
# fewer programs. Forward: fp16 32 (5.5 us at H = 256, 7.9 with 16; 13.0 at H = 1024, 13.6 with 16), float32 16
# (24 us at H = 256, 42 with 32). Backward: 16 in every measured case (fp16 17.1 us vs 20.7 with 32 at H = 256,
# 54 vs 69 at H = 1024; float32 17.2 vs 19.6 and 53.6 vs 67.5). float64 was not measured: the float32 choices.
_FORWARD_UNIT_BLOCKS = {2: (32, 16, 64, 128), 4: (16, 32, 64, 128), 8: (16, 32, 64, 128)}
_BACKWARD_UNIT_BLOCKS = (16, 32, 64, 128)


@dataclass(frozen=True)
class Plan:
    """Tiles and grid of one persistent launch."""

    block_b: int
    block_u: int
    unit_tiles: int
    block_n: int
    col_tiles: int
    programs: int  # P: programs per (batch tile, direction) group
    batch_tiles: int
    block_k: int
    hoist_w: bool


def _device_facts(device: torch.device) -> tuple[int, int]:
    """(programs the GPU holds at once, compute capability as 10 * major + minor).

    One program per SM: a conservative co-residency bound that holds whatever the registers and shared memory of
    the chosen config; the cooperative launch checks it again.
    """
    properties = torch.cuda.get_device_properties(device)
    return properties.multi_processor_count, 10 * properties.major + properties.minor


def plan(hidden: int, h_out: int, batch: int, num_directions: int, dtype: torch.dtype, device,
         *, backward: bool = False) -> Plan | str:  # fmt: skip
    """Tile sizes and grid for these sizes on ``device`` (of the backward kernel with ``backward``), or a string
    saying why the persistent kernel cannot run."""
    if tuning.INTERPRETED:
        return plan_for(hidden, h_out, batch, num_directions, dtype, None, backward=backward)
    capacity, arch = _device_facts(device)
    return plan_for(hidden, h_out, batch, num_directions, dtype, capacity, backward=backward, arch=arch)


def plan_for(hidden: int, h_out: int, batch: int, num_directions: int, dtype: torch.dtype, capacity, *,
             backward: bool = False, arch: int = 90) -> Plan | str:  # fmt: skip
    """``plan`` for a GPU of compute capability ``arch`` (e.g. 80, 90) that holds ``capacity`` programs at once;
    ``capacity`` None means the interpreter."""
    if capacity is None:
        # One program per group looping over 64-wide tiles: the interpreter's cost is per block operation.
        block_u = min(64, triton.next_power_of_2(hidden))
        block_n = min(64, triton.next_power_of_2(h_out))
        unit_tiles = triton.cdiv(hidden, block_u)
        return Plan(16, block_u, unit_tiles, block_n, triton.cdiv(h_out, block_n), 1, triton.cdiv(batch, 16), 64,
                    unit_tiles == 1 and h_out <= 64)  # fmt: skip
    element_size = torch.finfo(dtype).bits // 8
    hoist_w = not backward and element_size == 2 and h_out <= HOIST_MAX_K
    # Batch tiles of up to 32 rows, and 16 with W_hh hoisted: at 32 the hoisted fp16 tiles spill (aot report), and
    # at 64 they need more shared memory than a block may have (264 KB measured on an H200 at H = 256). The backward
    # keeps 16: at 32 its tiles spill a few bytes on sm_80 (aot report, H = 256, every dtype but bf16).
    block_b = 16 if hoist_w or backward else min(32, max(16, triton.next_power_of_2(batch)))
    batch_tiles = triton.cdiv(batch, block_b)
    streamed_k = backward_chunk(arch) if backward else STREAM_K[element_size]
    block_k = max(16, triton.next_power_of_2(h_out)) if hoist_w else streamed_k
    unit_blocks = _BACKWARD_UNIT_BLOCKS if backward else _FORWARD_UNIT_BLOCKS[element_size]
    for block_u in unit_blocks:
        programs = triton.cdiv(hidden, block_u)
        if batch_tiles * programs * num_directions <= capacity:
            return Plan(block_b, block_u, 1, block_u, 1, programs, batch_tiles, block_k, hoist_w)
    return (
        f"{batch_tiles} batch tiles x {num_directions} directions x hidden_size={hidden} need more than the "
        f"{capacity} co-resident programs of this GPU"
    )


def _fixed_meta(config: dict) -> dict:
    # One stage, as in every shipped config (tuning._persistent_space): Triton's default of 3 pipelines the
    # reduction loop, which multiplies shared memory and, measured on an H200 with triton 3.6, gives wrong results
    # for float32 with W_hh on chip.
    return {"num_warps": config.get("num_warps", 4), "num_stages": 1}


def _launch_options():
    return {} if tuning.INTERPRETED else {"launch_cooperative_grid": True}


def persistent_forward(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths=None, *, save: bool, config: dict | None = None):
    """Same contract as ``launch.step_forward``, with one kernel launch for the whole sequence.

    ``config`` replaces the planned tiles and warps (tests): keys BLOCK_B, BLOCK_U, UNIT_TILES, BLOCK_N,
    COL_TILES, PROGRAMS, BLOCK_K, HOIST_W, num_warps (the shipped configs' one pipeline stage is kept: see
    ``_fixed_meta``).
    """
    seq_len, batch, _ = x.shape
    num_directions, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4
    buffers = launch.prepare_forward(x, h0, c0, w_ih, bias, hidden, save=save)
    if batch == 0:
        return launch.finish_forward(buffers, lengths, x.dtype)
    tiles = _tiles(hidden, h_out, batch, num_directions, x.dtype, x.device, config, backward=False)
    unprojected = (
        torch.empty(num_directions, batch, hidden, dtype=x.dtype, device=x.device) if w_hr is not None else None
    )
    sync = torch.zeros(tiles.batch_tiles * num_directions, dtype=torch.int32, device=x.device)
    kernel = tuning.persistent_forward_kernel if config is None else tuning.lstm_persistent_forward_kernel
    meta = {} if config is None else _fixed_meta(config)
    kernel[(tiles.batch_tiles, tiles.programs, num_directions)](
        buffers.x_proj, buffers.bias if buffers.bias is not None else buffers.cs, w_hh.contiguous(),
        w_hr.contiguous() if w_hr is not None else w_hh, buffers.hs,
        unprojected if unprojected is not None else buffers.hs, buffers.cs, buffers.gates,
        lengths if lengths is not None else sync, sync,
        seq_len, batch, buffers.x_proj.stride(0), buffers.x_proj.stride(1),
        HIDDEN=hidden, H_OUT=h_out, HAS_BIAS=buffers.bias is not None, HAS_PROJ=w_hr is not None,
        HAS_LENGTHS=lengths is not None, GRID_SYNC=tiles.programs > 1, SAVE=save, UPCAST=launch.upcast_dot(x.dtype),
        BLOCK_B=tiles.block_b,
        BLOCK_U=tiles.block_u,
        UNIT_TILES=tiles.unit_tiles, BLOCK_N=tiles.block_n, COL_TILES=tiles.col_tiles, BLOCK_K=tiles.block_k,
        HOIST_W=tiles.hoist_w, **meta, **_launch_options(),
    )  # fmt: skip
    return launch.finish_forward(buffers, lengths, x.dtype)


def persistent_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, saved, lengths=None, *,
                        config: dict | None = None):  # fmt: skip
    """Same contract as ``launch.step_backward``, with one kernel launch for the whole recurrence."""
    seq_len, batch, _ = x.shape
    num_directions, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4
    d_hs, d_gates = launch.prepare_backward(grad_output, grad_h_n, lengths, hidden)
    acc_dtype = d_gates.dtype
    d_cs = torch.empty(2, num_directions, batch, hidden, dtype=acc_dtype, device=x.device)
    d_cs[0] = grad_c_n
    d_h0 = torch.empty(num_directions, batch, h_out, dtype=acc_dtype, device=x.device)
    if batch > 0:
        tiles = _tiles(hidden, h_out, batch, num_directions, x.dtype, x.device, config, backward=True)
        sync = torch.zeros(tiles.batch_tiles * num_directions, dtype=torch.int32, device=x.device)
        kernel = tuning.persistent_backward_kernel if config is None else tuning.lstm_persistent_backward_kernel
        meta = {} if config is None else _fixed_meta(config)
        kernel[(tiles.batch_tiles, tiles.programs, num_directions)](
            saved.gates, saved.cs, w_hh.contiguous(), w_hr.contiguous() if w_hr is not None else w_hh, d_hs, d_gates,
            d_cs, d_h0, lengths if lengths is not None else sync, sync, seq_len, batch,
            HIDDEN=hidden, H_OUT=h_out, BLOCK_B=tiles.block_b, BLOCK_U=tiles.block_u, UNIT_TILES=tiles.unit_tiles,
            BLOCK_N=tiles.block_n, COL_TILES=tiles.col_tiles, BLOCK_K=tiles.block_k,
            HAS_PROJ=w_hr is not None,
            HAS_LENGTHS=lengths is not None, GRID_SYNC=tiles.programs > 1, **meta, **_launch_options(),
        )  # fmt: skip
    d_x, d_w_ih, d_w_hh, d_bias, d_w_hr = launch.weight_gradients(d_gates, d_hs, x, w_ih, w_hr, saved, lengths)
    return d_x, d_h0, d_cs[seq_len % 2], d_w_ih, d_w_hh, d_bias, d_w_hr


def _tiles(hidden, h_out, batch, num_directions, dtype, device, config, *, backward: bool) -> Plan:
    if config is not None:
        return Plan(config["BLOCK_B"], config["BLOCK_U"], config["UNIT_TILES"], config["BLOCK_N"],
                    config["COL_TILES"], config["PROGRAMS"], triton.cdiv(batch, config["BLOCK_B"]),
                    config["BLOCK_K"], config["HOIST_W"])  # fmt: skip
    planned = plan(hidden, h_out, batch, num_directions, dtype, device, backward=backward)
    if isinstance(planned, str):
        raise RuntimeError(f"triton_lstm: kernel='persistent' cannot run this configuration: {planned}")
    return planned
