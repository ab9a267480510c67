"""Element-wise helpers shared by the LSTM kernels.

``tl.extra.libdevice`` is unavailable in Triton's interpreter, so tanh is built from ``tl.exp``; the same code
runs on the GPU. The dot helper hides the interpreter's broken bf16 ``tl.dot`` (it multiplies raw bit patterns).
"""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    # exp(-x) overflows to inf for very negative x, which gives exactly 0: no NaN.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    """tanh from exp(-2|x|): never overflows, about 1 ulp in float32 and float64."""
    abs_x = tl.abs(x)
    e = tl.exp(-2.0 * abs_x)
    magnitude = (1.0 - e) / (1.0 + e)
    result = tl.where(x < 0, -magnitude, magnitude)
    if x.dtype != tl.float64:
        # 1 - e cancels for small |x|; below 0.125 the odd Taylor series (next term ~2e-10 relative) is exact
        # to float32 rounding.
        x2 = x * x
        series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
        result = tl.where(abs_x < 0.125, series, result)
    return result


@triton.jit
def dot_acc(a, b, acc, UPCAST: tl.constexpr, TF32: tl.constexpr = False):
    """acc + a @ b with the accumulator's precision (fp32, or fp64 for fp64 operands); 2-D or batched 3-D.

    float32 operands multiply exactly ("ieee", FMA units), or in TF32 on tensor cores with ``TF32``: the launchers set
    it exactly where torch's own LSTM would use TF32 (``triton_lstm.precision``). UPCAST converts the operands to the
    accumulator's dtype first: the launchers set it for bf16 under the interpreter only, so that the GPU keeps its
    bf16 tensor-core path.
    """
    if UPCAST:
        a = a.to(acc.dtype)
        b = b.to(acc.dtype)
    if acc.dtype == tl.float64:
        return tl.dot(a, b, acc, out_dtype=tl.float64)
    elif a.dtype == tl.float32:
        if TF32:
            return tl.dot(a, b, acc, input_precision="tf32")
        else:
            return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def zero_unless(active, a, b, c, d):
    """(a, b, c, d) where ``active``, else 0: the four gates (or their gradients) of rows past their length. A mask,
    not a product, so that an infinite value there (an infinite c0) cannot turn into NaN."""
    return tl.where(active, a, 0.0), tl.where(active, b, 0.0), tl.where(active, c, 0.0), tl.where(active, d, 0.0)


@triton.jit
def cell_forward(acc_i, acc_f, acc_g, acc_o, c_prev):
    """One LSTM cell from the four gate pre-activations: (i, f, g, o after activation, c, h)."""
    gate_i = sigmoid(acc_i)
    gate_f = sigmoid(acc_f)
    gate_g = tanh(acc_g)
    gate_o = sigmoid(acc_o)
    c = gate_f * c_prev + gate_i * gate_g
    return gate_i, gate_f, gate_g, gate_o, c, gate_o * tanh(c)


@triton.jit
def cell_backward(d_m, d_c, gate_i, gate_f, gate_g, gate_o, c, c_prev):
    """Gradients of one LSTM cell: d_m = dL/d(o * tanh(c)), d_c = dL/dc from the next step.

    Returns the gate pre-activation gradients (da_i, da_f, da_g, da_o) and the total dL/dc of this step.
    """
    tanh_c = tanh(c)
    d_c = d_c + d_m * gate_o * (1.0 - tanh_c * tanh_c)
    da_i = d_c * gate_g * gate_i * (1.0 - gate_i)
    da_f = d_c * c_prev * gate_f * (1.0 - gate_f)
    da_g = d_c * gate_i * (1.0 - gate_g * gate_g)
    da_o = d_m * tanh_c * gate_o * (1.0 - gate_o)
    return da_i, da_f, da_g, da_o, d_c


@triton.jit
def dot_split(a, b, acc, UPCAST: tl.constexpr, TF32: tl.constexpr):
    """acc + a @ b for ``a`` in the accumulator dtype and ``b`` in the input dtype, on tensor cores where b is 16-bit:
    a is split into a 16-bit part and the 16-bit rounding of what that part misses, two products together as
    accurate as fp32 operands would be (about twice the 16-bit mantissa), where one rounding of a would lose it."""
    if b.dtype == tl.float16 or b.dtype == tl.bfloat16:
        high = a.to(b.dtype)
        low = (a - high.to(a.dtype)).to(b.dtype)
        acc = dot_acc(high, b, acc, UPCAST, TF32)
        acc = dot_acc(low, b, acc, UPCAST, TF32)
    else:
        acc = dot_acc(a, b.to(a.dtype), acc, UPCAST, TF32)
    return acc
