"""Tolerances, comparison and proof-of-kernel helpers for the conformance suite."""

import contextlib
import copy
from dataclasses import dataclass

import torch

from triton_lstm import fast_launch, graphs, tuning


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# One table, written once. float64 results (and float32 ones without a float64 reference) are compared with
# torch.nn.LSTM directly: |ours - torch| <= atol + rtol * |torch|. For float16 and bfloat16, torch's own result is
# itself far from exact, so the rule is the three-way one, element by element:
#     |ours - ref64| <= 2 * max|torch_same_dtype - ref64| + atol + rtol * |ref64|
# with ref64 = torch.nn.LSTM run in float64 on the same values (rtol is 0 for these dtypes).
TOLERANCES = {
    torch.float64: Tolerance(atol=1e-10, rtol=1e-8),
    torch.float32: Tolerance(atol=2e-5, rtol=2e-5),
    torch.float16: Tolerance(atol=2e-3, rtol=0.0),
    torch.bfloat16: Tolerance(atol=1.6e-2, rtol=0.0),
}
LOW_PRECISION = (torch.float16, torch.bfloat16)
# float32 follows the same three-way rule whenever a float64 reference is given: on CUDA, torch's own float32 result
# is itself 1e-5 to 6e-5 away from float64 for deep bidirectional stacks (cuDNN), and 2e-5 to 4e-5 for weight
# gradients summed over 2,048 rows (cuDNN and torch's native CUDA LSTM alike), measured on an H200 where ours was
# 1e-7 to 2e-5 away; comparing with it directly would measure torch's error, not ours. The tests give one for these
# dtypes.
FLOAT64_REFERENCED = (*LOW_PRECISION, torch.float32)
# A launcher's three outputs, as the checks name them.
STATES = ("output", "h_n", "c_n")


def reference_checker(dtype: torch.dtype, accumulator: torch.dtype | None = None):
    """``check(name, ours, expected)``: a launcher's result against a float64 reference, within ``dtype``'s
    tolerance; with ``accumulator``, every result but the three states must come back in that dtype."""
    tol = TOLERANCES[dtype]

    def check(name: str, ours: torch.Tensor, expected: torch.Tensor) -> None:
        assert accumulator is None or name in STATES or ours.dtype == accumulator, name
        torch.testing.assert_close(ours.double(), expected, atol=tol.atol, rtol=tol.rtol, msg=lambda m: f"{name}: {m}")

    return check


def check_states_and_input_grads(check, states, ref, input_grads, ref_grads, valid=None) -> None:
    """(output, h_n, c_n) against ``ref`` and (d_x, d_h0, d_c0) against the first three of ``ref_grads``; output rows
    past their sequence's length (``valid``, (T, B), False) are not outputs and are zeroed first."""
    output, h_n, c_n = states
    if valid is not None:
        output = output * valid[:, :, None]
    for name, ours, expected in zip(STATES, (output, h_n, c_n), ref, strict=True):
        check(name, ours, expected)
    for name, ours, expected in zip(("d_x", "d_h0", "d_c0"), input_grads, ref_grads[:3], strict=True):
        check(name, ours, expected)


def _describe(diff: torch.Tensor) -> str:
    index = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if diff.numel() else ()
    return f"max |diff| {diff.max().item():.3e} at index {index} (shape {tuple(diff.shape)})"


def assert_conforms(name: str, ours: torch.Tensor, theirs: torch.Tensor, ref64: torch.Tensor | None = None) -> None:
    """Check ``ours`` against torch.nn.LSTM's ``theirs`` (same dtype) under the dtype's tolerance.

    Low precision needs ``ref64``, torch.nn.LSTM's float64 result for the same values; float32 uses it when given
    (see FLOAT64_REFERENCED), else compares with ``theirs`` directly.
    """
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} != torch's {tuple(theirs.shape)}"
    assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} != torch's {theirs.dtype}"
    assert ours.device == theirs.device, f"{name}: device {ours.device} != torch's {theirs.device}"
    tol = TOLERANCES[theirs.dtype]
    if theirs.dtype in LOW_PRECISION or (theirs.dtype == torch.float32 and ref64 is not None):
        assert ref64 is not None, f"{name}: low precision needs the float64 reference"
        ours_err = (ours.double() - ref64.double()).abs()
        torch_err = (theirs.double() - ref64.double()).abs()
        assert torch.isfinite(ours_err).all(), f"{name}: non-finite values where torch has none"
        # The dtype's rtol (0 for fp16/bf16) keeps float32's allowance relative for large values, as below.
        excess = ours_err - (2 * torch_err.max().item() + tol.atol + tol.rtol * ref64.double().abs())
        assert (excess <= 0).all(), (
            f"{name}: error vs float64 {_describe(ours_err)} exceeds 2 x torch's ({torch_err.max().item():.3e}) "
            f"+ {tol.atol:g} + {tol.rtol:g} x |float64|"
        )
        return
    diff = (ours.double() - theirs.double()).abs()
    allowed = tol.atol + tol.rtol * theirs.double().abs()
    assert torch.isfinite(ours).all() == torch.isfinite(theirs).all(), f"{name}: non-finite values differ"
    assert (diff <= allowed).all(), f"{name}: {_describe(diff)}, atol {tol.atol:g}, rtol {tol.rtol:g}"


@contextlib.contextmanager
def exact_float32_torch():
    """torch.nn.LSTM asked for float32 without TF32 on CUDA (no effect elsewhere): cuDNN's RNN setting
    (``torch.backends.cudnn.rnn.fp32_precision``, "tf32" by default from torch 2.9) and the global one.

    Even so, measured on an H200 with torch 2.11, cuDNN's float32 gradients of 2- and 3-layer bidirectional stacks
    were 1e-5 to 6e-5 away from float64 where the Triton kernels and torch's native CUDA LSTM were 1e-7 to 2e-6
    away: hence FLOAT64_REFERENCED.
    """
    cudnn = torch.backends.cudnn
    rnn = getattr(cudnn, "rnn", None)  # the per-op precision setting exists from torch 2.9
    saved = cudnn.allow_tf32, rnn.fp32_precision if rnn is not None else None
    cudnn.allow_tf32 = False
    if rnn is not None:
        rnn.fp32_precision = "ieee"
    try:
        yield
    finally:
        if rnn is not None:
            rnn.fp32_precision = saved[1]
        cudnn.allow_tf32 = saved[0]


# The launchable kernels of triton_lstm.tuning, by the direction of the pass they belong to.
_KERNELS = {
    "step_forward_kernel": "forward",
    "persistent_forward_kernel": "forward",
    "step_backward_kernel": "backward",
    "persistent_backward_kernel": "backward",
}


class TritonOnly:
    """Makes torch's LSTM op raise and counts Triton kernel launches while active.

    ``launches`` counts by pass ("forward", "backward") and ``by_kernel`` by kernel name, through every launch
    path: Triton's own (``tuning.<kernel>[grid](...)``), the lean launches of ``fast_launch`` (on CUDA), and the
    replays of ``graphs`` (each replay counts the launches captured in it; the capture itself runs nothing).
    ``around_launch``, a context-manager factory, wraps every launch made through Triton's own path (e.g. to hide
    the interpreter's tensor traffic from a dispatch mode that counts the launcher's torch ops).
    """

    def __init__(self, monkeypatch, around_launch=None):
        self._monkeypatch = monkeypatch
        self._around_launch = around_launch or contextlib.nullcontext
        self._paused = 0
        self.launches = {"forward": 0, "backward": 0}
        self.by_kernel = dict.fromkeys(_KERNELS, 0)

    def _count(self, name, times=1):
        if name in _KERNELS and not self._paused:
            self.launches[_KERNELS[name]] += times
            self.by_kernel[name] += times

    def _counting(self, kernel, name):
        owner = self

        class Counting:
            def __getitem__(self, grid):
                launch = kernel[grid]

                def run(*args, **kwargs):
                    owner._count(name)
                    with owner._around_launch():
                        return launch(*args, **kwargs)

                return run

        return Counting()

    @contextlib.contextmanager
    def __call__(self):
        def refuse(*args, **kwargs):
            raise AssertionError("torch's own LSTM ran where the Triton kernels were asked for")

        owner = self
        lean_call, replay, capture = fast_launch.LeanLaunch.__call__, graphs.StepGraph.replay, graphs.StepGraph._capture

        def lean(launch, step):
            owner._count(launch.name)
            return lean_call(launch, step)

        def replayed(graph):
            for name, times in graph.launches.items():
                owner._count(name, times)
            return replay(graph)

        def captured(graph, loop):
            owner._paused += 1
            try:
                return capture(graph, loop)
            finally:
                owner._paused -= 1

        with self._monkeypatch.context() as patch:
            patch.setattr(torch, "lstm", refuse)
            patch.setattr(torch._VF, "lstm", refuse, raising=False)
            for name in _KERNELS:
                patch.setattr(tuning, name, self._counting(getattr(tuning, name), name))
            patch.setattr(fast_launch.LeanLaunch, "__call__", lean)
            patch.setattr(graphs.StepGraph, "replay", replayed)
            patch.setattr(graphs.StepGraph, "_capture", captured)
            yield self


def float64_twin(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a torch.nn.LSTM, for references."""
    return copy.deepcopy(module).double()


def assert_error_within(
    name: str, ours: torch.Tensor, theirs: torch.Tensor, ref64: torch.Tensor, *, factor: float, atol: float
) -> None:
    """max|ours - ref64| <= factor * max|theirs - ref64| + atol: ours is as accurate as torch's own result in the same
    dtype (``theirs``), up to ``factor``, both measured against the float64 reference ``ref64``."""
    assert ours.shape == theirs.shape == ref64.shape, f"{name}: shapes {ours.shape}, {theirs.shape}, {ref64.shape}"
    ours_err = (ours.double() - ref64.double()).abs()
    torch_err = (theirs.double() - ref64.double()).abs()
    assert torch.isfinite(ours_err).all(), f"{name}: non-finite error against float64"
    bound = factor * torch_err.max().item() + atol
    assert ours_err.max().item() <= bound, (
        f"{name}: error vs float64 {_describe(ours_err)} exceeds {factor:g} x torch's ({torch_err.max().item():.3e}) "
        f"+ {atol:g}"
    )


def assert_nonfinite_conforms(
    name: str, ours: torch.Tensor, theirs: torch.Tensor, ref64: torch.Tensor | None = None
) -> None:
    """NaN, +inf and -inf exactly where torch.nn.LSTM's ``theirs`` has them, and the finite values within the
    dtype's tolerance (``assert_conforms`` on the positions finite in torch's result and in ``ref64``)."""
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} != torch's {tuple(theirs.shape)}"
    for kind, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        differ = test(ours) != test(theirs)
        if differ.any():
            where = tuple(int(i) for i in torch.nonzero(differ)[0])
            raise AssertionError(
                f"{name}: {kind} differs from torch at {int(differ.sum())} of {differ.numel()} positions, first at "
                f"{where}: ours {ours[where].item()}, torch {theirs[where].item()}"
            )
    finite = torch.isfinite(theirs)
    if ref64 is not None:
        finite &= torch.isfinite(ref64)
    if not finite.any():
        return
    assert_conforms(name, ours[finite], theirs[finite], ref64[finite] if ref64 is not None else None)


@dataclass
class Run:
    """What ``forward_and_grads`` returns: outputs and gradients by name, and a packed output's index fields."""

    outputs: dict
    grads: dict
    packing: tuple | None  # (batch_sizes, sorted_indices, unsorted_indices) of a PackedSequence output


def forward_and_grads(module, x, hx, upstream, *, lengths=None, enforce_sorted=True, seed=None) -> Run:
    """Run ``module`` on leaf copies of ``x`` and ``hx`` and backpropagate the fixed ``upstream`` gradients of
    (output, h_n, c_n); the gradients of the input, h0, c0 and every parameter are returned by name.

    With ``lengths``, ``x`` (padded, in the module's batch_first layout) is packed first; ``upstream[0]`` is then the
    gradient of the packed output's data. ``seed`` seeds torch's global RNG for the call (dropout) without
    changing it for anyone else.
    """
    x = x.detach().requires_grad_()
    hx = tuple(t.detach().requires_grad_() for t in hx) if hx is not None else None
    packed = lengths is not None
    if packed:
        inputs = torch.nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=module.batch_first, enforce_sorted=enforce_sorted
        )
    else:
        inputs = x
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        output, (h_n, c_n) = module(inputs, hx)
    packing = None
    if packed:
        packing = (output.batch_sizes, output.sorted_indices, output.unsorted_indices)
        output = output.data
    outputs = {"output": output, "h_n": h_n, "c_n": c_n}
    loss = sum((out * grad.to(out.dtype)).sum() for out, grad in zip(outputs.values(), upstream, strict=True))
    leaves = {"input": x}
    if hx is not None:
        leaves.update(h0=hx[0], c0=hx[1])
    leaves.update(dict(module.named_parameters()))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return Run(outputs, dict(zip(leaves, grads, strict=True)), packing)
