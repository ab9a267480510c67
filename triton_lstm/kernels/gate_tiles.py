"""W_hh tiles with the four gates of each hidden unit side by side, and the moves between that order and one tensor
per gate, shared by the persistent kernels.

A program that owns the hidden units u0 .. u0 + U - 1 computes all four gates of them with one product: column n of
its tile (of 4U) is gate n % 4 (i, f, g, o) of unit u0 + n // 4, i.e. row (n % 4) * H + u0 + n // 4 of W_hh. One
product with N = 4U keeps every tl.dot dimension >= 16 down to U = 4, so a small layer can still be spread over
many programs.
"""

import triton
import triton.language as tl


@triton.jit
def gate_rows(u0, n0, COLUMNS: tl.constexpr, HIDDEN: tl.constexpr):
    """Rows of W_hh (int64) behind the interleaved gate columns n = n0 .. n0 + COLUMNS - 1 of the units from u0, and
    which of them exist."""
    n = n0 + tl.arange(0, COLUMNS)
    unit = u0 + n // 4
    return (n % 4).to(tl.int64) * HIDDEN + unit, unit < HIDDEN


@triton.jit
def load_gate_columns(w_ptr, rows, rows_ok, k0, BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr, K_SIZE: tl.constexpr):
    """The tile W[rows, k0 + k] laid out for ``h @ tile``: (BLOCK_K, 4U), or (K_SPLIT, BLOCK_K / K_SPLIT, 4U) with
    reduction chunk s in slice s. Row-major W of K_SIZE columns; columns past K_SIZE and missing rows load as 0."""
    if K_SPLIT == 1:
        k = k0 + tl.arange(0, BLOCK_K)[:, None]
        n = rows[None, :]
        ok = rows_ok[None, :]
    else:
        chunk: tl.constexpr = BLOCK_K // K_SPLIT
        k = k0 + tl.arange(0, K_SPLIT)[:, None, None] * chunk + tl.arange(0, chunk)[None, :, None]
        n = rows[None, None, :]
        ok = rows_ok[None, None, :]
    return tl.load(w_ptr + n * K_SIZE + k, mask=(k < K_SIZE) & ok, other=0.0)


@triton.jit
def load_rows(p_rows, rows_ok, k0, BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr, K_SIZE: tl.constexpr,
              p_scale_rows=None, SCALED: tl.constexpr = False):  # fmt: skip
    """Activations laid out as the left operand of ``load_gate_columns``' tile: p_rows (BLOCK_B,) points at the rows,
    the tile is (BLOCK_B, BLOCK_K), or (K_SPLIT, BLOCK_B, BLOCK_K / K_SPLIT). Loaded past L1 (".cg"): other programs
    wrote them since the last barrier. With SCALED each element is multiplied, in its own dtype, by the element at the
    same offset from p_scale_rows (a dropout mask, applied as torch applies it)."""
    if K_SPLIT == 1:
        k = k0 + tl.arange(0, BLOCK_K)[None, :]
        p = p_rows[:, None]
        ok = rows_ok[:, None]
        if SCALED:
            p_scale = p_scale_rows[:, None]
    else:
        chunk: tl.constexpr = BLOCK_K // K_SPLIT
        k = k0 + tl.arange(0, K_SPLIT)[:, None, None] * chunk + tl.arange(0, chunk)[None, None, :]
        p = p_rows[None, :, None]
        ok = rows_ok[None, :, None]
        if SCALED:
            p_scale = p_scale_rows[None, :, None]
    mask = (k < K_SIZE) & ok
    rows = tl.load(p + k, mask=mask, other=0.0, cache_modifier=".cg")
    if SCALED:
        rows = rows * tl.load(p_scale + k, mask=mask, other=0.0)
    return rows


@triton.jit
def split_gates(acc, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr):
    """(BLOCK_B, 4U) in the interleaved order -> the (BLOCK_B, U) tensors of gates i, f, g and o."""
    even, odd = tl.split(tl.reshape(acc, (BLOCK_B, BLOCK_U, 2, 2)))
    gate_i, gate_g = tl.split(even)
    gate_f, gate_o = tl.split(odd)
    return gate_i, gate_f, gate_g, gate_o


@triton.jit
def join_gates(gate_i, gate_f, gate_g, gate_o, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr):
    """The inverse of ``split_gates``."""
    return tl.reshape(tl.join(tl.join(gate_i, gate_g), tl.join(gate_f, gate_o)), (BLOCK_B, 4 * BLOCK_U))
