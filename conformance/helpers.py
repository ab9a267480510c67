"""Tolerances, comparison and proof-of-kernel helpers for the conformance suite."""

import contextlib
import copy
from dataclasses import dataclass

import torch

from triton_lstm import tuning


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# One table, written once. float32/float64 results are compared with torch.nn.LSTM directly. For float16 and
# bfloat16, torch's own result is itself far from exact, so the rule is the three-way one:
#     max|ours - ref64| <= 2 * max|torch_same_dtype - ref64| + atol
# with ref64 = torch.nn.LSTM run in float64 on the same values.
TOLERANCES = {
    torch.float64: Tolerance(atol=1e-10, rtol=1e-8),
    torch.float32: Tolerance(atol=2e-5, rtol=2e-5),
    torch.float16: Tolerance(atol=2e-3, rtol=0.0),
    torch.bfloat16: Tolerance(atol=1.6e-2, rtol=0.0),
}
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _describe(diff: torch.Tensor) -> str:
    index = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if diff.numel() else ()
    return f"max |diff| {diff.max().item():.3e} at index {index} (shape {tuple(diff.shape)})"


def assert_conforms(name: str, ours: torch.Tensor, theirs: torch.Tensor, ref64: torch.Tensor | None = None) -> None:
    """Check ``ours`` against torch.nn.LSTM's ``theirs`` (same dtype) under the dtype's tolerance.

    Low precision needs ``ref64``, torch.nn.LSTM's float64 result for the same values.
    """
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} != torch's {tuple(theirs.shape)}"
    assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} != torch's {theirs.dtype}"
    assert ours.device == theirs.device, f"{name}: device {ours.device} != torch's {theirs.device}"
    tol = TOLERANCES[theirs.dtype]
    if theirs.dtype in LOW_PRECISION:
        assert ref64 is not None, f"{name}: low precision needs the float64 reference"
        ours_err = (ours.double() - ref64.double()).abs()
        torch_err = (theirs.double() - ref64.double()).abs()
        assert torch.isfinite(ours_err).all(), f"{name}: non-finite values where torch has none"
        bound = 2 * torch_err.max().item() + tol.atol
        assert ours_err.max().item() <= bound, (
            f"{name}: error vs float64 {_describe(ours_err)} exceeds 2 x torch's ({torch_err.max().item():.3e}) "
            f"+ {tol.atol:g}"
        )
        return
    diff = (ours.double() - theirs.double()).abs()
    allowed = tol.atol + tol.rtol * theirs.double().abs()
    assert torch.isfinite(ours).all() == torch.isfinite(theirs).all(), f"{name}: non-finite values differ"
    assert (diff <= allowed).all(), f"{name}: {_describe(diff)}, atol {tol.atol:g}, rtol {tol.rtol:g}"


class TritonOnly:
    """Makes torch's LSTM op raise and counts Triton kernel launches while active."""

    def __init__(self, monkeypatch):
        self._monkeypatch = monkeypatch
        self.launches = {"forward": 0, "backward": 0}

    def _counting(self, kernel, kind):
        counter = self.launches

        class Counting:
            def __getitem__(self, grid):
                launch = kernel[grid]

                def run(*args, **kwargs):
                    counter[kind] += 1
                    return launch(*args, **kwargs)

                return run

        return Counting()

    @contextlib.contextmanager
    def __call__(self):
        def refuse(*args, **kwargs):
            raise AssertionError("torch's own LSTM ran where the Triton kernels were asked for")

        with self._patches(refuse):
            yield self

    @contextlib.contextmanager
    def _patches(self, refuse):
        patch = self._monkeypatch
        with patch.context() as m:
            m.setattr(torch, "lstm", refuse)
            m.setattr(torch._VF, "lstm", refuse, raising=False)
            m.setattr(tuning, "step_forward_kernel", self._counting(tuning.step_forward_kernel, "forward"))
            m.setattr(tuning, "step_backward_kernel", self._counting(tuning.step_backward_kernel, "backward"))
            yield


def float64_twin(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a torch.nn.LSTM, for references."""
    return copy.deepcopy(module).double()
