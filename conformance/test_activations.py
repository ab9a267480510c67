"""Accuracy of the kernels' own tanh and sigmoid (``triton_lstm/kernels/math.py``), measured directly in ulps.

The conformance matrix cannot see an activation's error: its tolerances are looser than the error a wrong series
coefficient causes (a tanh coefficient 7 % off passed the whole suite). Here every element of a tensor goes through
``math.tanh`` and ``math.sigmoid`` in a one-line kernel, over the whole range of each dtype: magnitudes from the
smallest subnormal to past saturation, both signs, dense around zero and around the branch points, and the special
values. The error is measured against the exact value, in units in the last place of the exact value:

- float32 against torch's float64 result on the same inputs (itself within 1e-16, far below a float32 ulp);
- float64 against mpmath at 160 bits (torch's own float64 sigmoid is up to 2 ulp off, so it cannot be the judge),
  on the points where ours and torch's float64 result differ most plus a random sample.

Results below the dtype's smallest normal number may flush to zero, as torch's own float32 sigmoid does: there the
unit is the smallest normal number. The bound is 2 ulp. Measured here under the interpreter (triton 3.9 and 3.6
alike): float32 tanh 1.27 and sigmoid 1.35 ulp, float64 tanh 1.21 and sigmoid 0.99 ulp, where torch's own results are
0.57, 2.30, 0.63 and 2.43 ulp off. Replacing a result x by x (1 + 1e-6), or a series coefficient by 1.07 times it,
fails this test.
"""

import math

import mpmath
import pytest
import torch
import triton
import triton.language as tl

from triton_lstm import tuning
from triton_lstm.kernels import math as kernel_math

MAX_ULP = 2.0
MANTISSA_BITS = {torch.float32: 23, torch.float64: 52}
DTYPE_NAMES = {torch.float32: "fp32", torch.float64: "fp64"}
EXACT = {
    "tanh": mpmath.tanh,
    "sigmoid": lambda x: 1 / (1 + mpmath.exp(-x)),
}
# Where the kernels' formulas change: tanh's polynomial below |x| = 0.625; the exponential's clamps.
BRANCH_POINTS = (0.625, 44.0, 88.0, 354.5, 709.0)


@triton.jit
def _activations(x_ptr, tanh_ptr, sigmoid_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    tl.store(tanh_ptr + offsets, kernel_math.tanh(x), mask=mask)
    tl.store(sigmoid_ptr + offsets, kernel_math.sigmoid(x), mask=mask)


def _run(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """math.tanh(x) and math.sigmoid(x) from the kernels, on x's device; outputs poisoned with NaN first."""
    outputs = {"tanh": torch.full_like(x, float("nan")), "sigmoid": torch.full_like(x, float("nan"))}
    block = 65536 if tuning.INTERPRETED else 1024  # the interpreter's cost is per operation, not per element
    _activations[(triton.cdiv(x.numel(), block),)](x, outputs["tanh"], outputs["sigmoid"], x.numel(), BLOCK=block)
    return {name: value.cpu() for name, value in outputs.items()}


def _inputs(dtype: torch.dtype) -> torch.Tensor:
    """Finite inputs over the dtype's whole range, both signs, from a fixed seed."""
    info = torch.finfo(dtype)
    generator = torch.Generator().manual_seed(17)
    smallest = math.log10(info.smallest_normal * info.eps)  # the smallest subnormal
    magnitudes = torch.logspace(smallest, 3.0, 200_000, dtype=torch.float64)
    parts = [
        magnitudes,
        -magnitudes,
        torch.rand(200_000, generator=generator, dtype=torch.float64) * 80 - 40,
        torch.rand(200_000, generator=generator, dtype=torch.float64) * 2 - 1,
    ]
    x = torch.cat(parts).to(dtype)
    # 64 neighbours on each side of every branch point, both signs.
    steps = torch.arange(-64, 65, dtype=dtype)
    near = torch.cat([torch.tensor(point, dtype=dtype) * (1 + steps * info.eps) for point in BRANCH_POINTS])
    return torch.cat([x, near, -near, torch.tensor([0.0, info.tiny, info.max, -info.max], dtype=dtype)])


def _ulp_units(exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One ulp of ``dtype`` at each exact value (float64), or the smallest normal number below it (flush to zero)."""
    tiny = torch.finfo(dtype).tiny
    exponent = torch.floor(torch.log2(exact.abs().clamp_min(tiny)))
    return torch.where(exact.abs() < tiny, torch.full_like(exact, tiny), torch.exp2(exponent - MANTISSA_BITS[dtype]))


def _float32_errors(name, x, ours):
    """ulp errors of float32 ``ours`` and of torch's own float32 result, against torch's float64 result."""
    function = getattr(torch, name)
    exact = function(x.double())
    units = _ulp_units(exact, torch.float32)
    return (ours.double() - exact).abs() / units, (function(x).double() - exact).abs() / units


def _float64_errors(name, x, ours, sample=20_000):
    """ulp errors of float64 ``ours`` and of torch's float64 result, against mpmath at 160 bits, on the points where
    ours and torch differ most plus a random sample (mpmath is slow); returns the errors and those points."""
    theirs = getattr(torch, name)(x)
    distance = (ours - theirs).abs() / _ulp_units(theirs, torch.float64)
    generator = torch.Generator().manual_seed(18)
    chosen = torch.cat([distance.topk(2_000).indices, torch.randint(0, x.numel(), (sample,), generator=generator)])
    x, ours, theirs = x[chosen], ours[chosen], theirs[chosen]
    with mpmath.workprec(160):
        exact = [EXACT[name](mpmath.mpf(value)) for value in x.tolist()]
        # The exact value as an unevaluated sum hi + lo, so that an error is measured to a fraction of an ulp.
        hi = torch.tensor([float(value) for value in exact], dtype=torch.float64)
        lo = torch.tensor([float(value - mpmath.mpf(h)) for value, h in zip(exact, hi.tolist(), strict=True)],
                          dtype=torch.float64)  # fmt: skip
    units = _ulp_units(hi, torch.float64)
    return ((ours - hi) - lo).abs() / units, ((theirs - hi) - lo).abs() / units, x


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
def test_activation_within_two_ulp_over_the_whole_range(name, dtype, device):
    x = _inputs(dtype)
    ours = _run(x.to(device))[name]
    if dtype == torch.float32:
        errors, torch_errors = _float32_errors(name, x, ours)
        points = x
    else:
        errors, torch_errors, points = _float64_errors(name, x, ours)
    worst = int(errors.argmax())
    assert errors.max().item() <= MAX_ULP, (
        f"{name} {DTYPE_NAMES[dtype]}: {errors.max().item():.3f} ulp from the exact value at x = "
        f"{points[worst].item()!r} (allowed {MAX_ULP}; torch's own {DTYPE_NAMES[dtype]} result: at most "
        f"{torch_errors.max().item():.3f} ulp on these points)"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_NAMES.get)
def test_special_values_and_saturation(dtype, device):
    """NaN stays NaN, infinities and large magnitudes saturate to exactly +-1 (tanh) and 1 or 0 (sigmoid)."""
    inf, nan = float("inf"), float("nan")
    large = 20.0 if dtype == torch.float32 else 40.0  # tanh rounds to 1 from 9.01 (float32) and 19.1 (float64)
    x = torch.tensor([nan, inf, -inf, 0.0, large, -large, 1e4, -1e4, 800.0, -800.0], dtype=dtype)
    out = _run(x.to(device))
    expected = {
        "tanh": [nan, 1.0, -1.0, 0.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0],
        "sigmoid": [nan, 1.0, 0.0, 0.5, 1.0, torch.sigmoid(x[5].double()).item(), 1.0, 0.0, 1.0, 0.0],
    }
    for name, values in expected.items():
        torch.testing.assert_close(out[name], torch.tensor(values, dtype=dtype), rtol=0, atol=0, equal_nan=True)
