"""Element-wise helpers shared by the LSTM kernels.

``tl.extra.libdevice`` is unavailable in Triton's interpreter, so ``tanh`` and ``sigmoid`` are built here from
arithmetic that runs the same on the GPU, with their own exponential: ``tl.exp`` is ``ex2.approx`` on the GPU in
float32, and numpy's ``exp`` in the interpreter (2.4 ulp measured in float32, and machine-dependent). Both are within
1.5 ulp of the exact value over the whole float32 and float64 range (``conformance/test_activations.py``), computed
without fma, so the same whether or not the compiler fuses multiply-adds (the GPU does, the interpreter does not).
The dot helper hides the interpreter's broken bf16 ``tl.dot`` (it multiplies raw bit patterns).
"""

import triton
import triton.language as tl


@triton.jit
def _exp_neg(a, WITH_LO: tl.constexpr):
    """exp(-a) for a >= 0, +inf or NaN in a's dtype (float32 or float64): hi, and with ``WITH_LO`` also lo, the
    unevaluated rest (hi alone within 1.1 ulp; hi + lo within 0.7 ulp in float32, 0.12 ulp in float64, measured).
    Below the smallest normal number it flushes to 0, as torch's own float32 sigmoid does.

    exp(-a) = 2^-k exp(s) with k = round(a / ln 2) and s = k ln 2 - a in [-0.35, 0.35]; exp(s) = 1 + s + s^2 R(s),
    R a near-minimax polynomial (``mpmath.chebyfit`` on [-0.35, 0.35] of exp, degree 6, for float32, and of
    (exp(s) - 1 - s) / s^2, degree 10, for float64). lo gathers the rounding errors of the last two sums, and in
    float64 of s (float32 leaves that one out: the persistent kernels have no registers to spare for it).
    """
    # The clamp keeps the exponent field of 2^-k valid (exp(-709) and exp(-88) are below the smallest normal); NaN
    # passes. Rounding to 1.5 * 2^52 + 1023 (2^23 and 127 in float32) leaves j = that - k, whose low bits are that
    # field. ln 2 is split in two (Cody and Waite): the first part has 42 (16) significant bits, so k times it is
    # exact.
    if a.dtype == tl.float64:
        a = tl.minimum(a, 709.0, propagate_nan=tl.PropagateNan.ALL)
        j = 6755399441056767.0 - a * 1.4426950408889634
        k = 6755399441056767.0 - j
        s_hi = k * 0.6931471805598903 - a
        k_lo = k * 5.497923018708371e-14
        scale = (j.to(tl.int64, bitcast=True) << 52).to(tl.float64, bitcast=True)
    else:
        a = tl.minimum(a, 88.0, propagate_nan=tl.PropagateNan.ALL)
        j = 12583039.0 - a * 1.4426950408889634
        k = 12583039.0 - j
        s_hi = k * 0.693145751953125 - a
        k_lo = k * 1.428606765330187e-06
        scale = (j.to(tl.int32, bitcast=True) << 23).to(tl.float32, bitcast=True)
    s = s_hi + k_lo
    if a.dtype == tl.float64:
        r = s * 2.0915433598076003e-09 + 2.5106262550879078e-08
        r = r * s + 2.755727183153613e-07
        r = r * s + 2.755725286336732e-06
        r = r * s + 2.480158732699005e-05
        r = r * s + 0.00019841269876840357
        r = r * s + 0.0013888888888883332
        r = r * s + 0.008333333333325551
        r = r * s + 0.04166666666666667
        r = r * s + 0.1666666666666667
    else:
        r = s * 0.0013942148070782423 + 0.008375958539545536
        r = r * s + 0.041666340082883835
        r = r * s + 0.16666404902935028
    t = (s * s) * (r * s + 0.5)
    q = s + t
    hi = 1.0 + q
    if WITH_LO:
        q_lo = (s - q) + t  # exact error of s + t: |t| < |s|
        lo = ((1.0 - hi) + q) + q_lo  # exact error of 1 + q (|q| < 1), plus q's
        if a.dtype == tl.float64:
            # and s's: exp(s + s_lo) = exp(s) (1 + s_lo); exact unless |s| is far below an ulp's worth
            lo += hi * ((s_hi - s) + k_lo)
        result = hi * scale, lo * scale
    else:
        result = hi * scale
    return result


@triton.jit
def sigmoid(x):
    """1 / (1 + exp(-x)) in x's dtype (float32 or float64), within 1.5 ulp; saturates to exactly 0 and 1."""
    e, e_lo = _exp_neg(tl.abs(x), True)  # never overflows
    positive = x >= 0
    d = 1.0 + e
    y = tl.where(positive, 1.0, e) / d  # 1 / (1 + e) for x >= 0, e / (1 + e) below
    # One correction step for what the quotient lost: the numerator's e_lo and d's rounding error (1 - d) + e (exact)
    # plus e_lo. It is divided by d through y itself (1 / d is y, or 1 - y below 0): no second division.
    return y + (tl.where(positive, 0.0, e_lo) - y * (((1.0 - d) + e) + e_lo)) * tl.where(positive, y, 1.0 - y)


@triton.jit
def tanh(x):
    """tanh in x's dtype (float32 or float64), within 1.5 ulp; never overflows."""
    a = tl.abs(x)
    # |x| >= 0.625: 1 - 2e / (1 + e) with e = exp(-2|x|) < 0.29, so that the result is above 0.5 and the subtraction
    # loses nothing. The quotient is corrected for d's rounding error (1 - d) + e (exact); the correction is not
    # divided by d (at most 1.29), which changes it by less than a quarter of its own size, an ulp at most.
    e = _exp_neg(2.0 * a, False)
    d = 1.0 + e
    q = (2.0 * e) / d
    large = 1.0 - (q - q * ((1.0 - d) + e))
    # |x| < 0.625, where 1 - e would cancel: x + x^3 P(x^2), P a near-minimax fit (mpmath.chebyfit of
    # (tanh(sqrt(t)) - sqrt(t)) / t^1.5 on t in [0, 0.390625]): degree 5 in float32 (30 bits), 11 in float64 (59
    # bits).
    t = x * x
    if x.dtype == tl.float64:
        p = t * 6.485163482793113e-06 + -3.12011014257974e-05
        p = p * t + 9.257116129556769e-05
        p = p * t + -0.0002375906496055562
        p = p * t + 0.0005896606577757043
        p = p * t + -0.0014557754120478055
        p = p * t + 0.0035921217511549622
        p = p * t + -0.008863235103240878
        p = p * t + 0.021869488519008305
        p = p * t + -0.05396825396789699
        p = p * t + 0.13333333333333042
        p = p * t + -0.3333333333333333
    else:
        p = t * 0.002292744815349579 + -0.008343945257365704
        p = p * t + 0.02176891826093197
        p = p * t + -0.053959257900714874
        p = p * t + 0.13333304226398468
        p = p * t + -0.3333333432674408
    return tl.where(a < 0.625, (x * t) * p + x, tl.where(x < 0, -large, large))


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
