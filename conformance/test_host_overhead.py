"""Host work per time step of the per-step kernel, and the lean launch path that keeps it at one launch.

- Per step: a TorchDispatchMode counts every torch op the step launchers run and ``TritonOnly`` every kernel
  launch, for a forward and for a backward at T = 8 and at T = 16; the difference divided by 8 is what one time
  step costs the host: exactly one kernel launch and no other torch op, whatever the layer (directions, projection,
  variable lengths, with or without saving for backward). Torch ops inside a launch are not the launcher's (under
  the interpreter they are the interpreter moving tensors) and are not counted.
- The lean launch (``triton_lstm.fast_launch``): its feature detection against both launcher conventions (Triton
  3.6's and 3.9's, and the installed Triton's real launcher class), the exact call it makes, its fallbacks to
  Triton's own path, all with stand-in compiled kernels (no GPU needed). On CUDA: the lean launches run and give
  bitwise the results of Triton's own path.
"""

import collections
import contextlib
import inspect
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import triton_lstm
from conformance.helpers import TritonOnly
from triton_lstm import fast_launch, launch

SHORT, LONG = 8, 16
CASES = {
    # (directions, proj_size, variable lengths, save for backward)
    "uni": (1, 0, False, True),
    "bi": (2, 0, False, True),
    "proj": (1, 3, False, True),
    "bi-proj-ragged": (2, 3, True, True),
    "inference": (2, 0, False, False),
}


class OpCounter(TorchDispatchMode):
    """Counts the torch ops dispatched while active, by name, except while ``hidden()``."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self._hidden = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._hidden:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def hidden(self):
        self._hidden += 1
        try:
            yield
        finally:
            self._hidden -= 1


def _layer(seq_len, directions, proj_size, ragged, device):
    """Inputs of one layer's launchers (x, h0, c0, w_ih, w_hh, bias, w_hr, lengths) and its output gradients."""
    generator = torch.Generator().manual_seed(seq_len)
    batch, input_size, hidden = 3, 4, 5
    h_out = proj_size or hidden

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    lengths = None
    if ragged:
        lengths = torch.tensor([seq_len, seq_len - 3, 1], dtype=torch.int32, device=device)
    w_hr = randn(directions, h_out, hidden) if proj_size else None
    layer = (randn(seq_len, batch, input_size), randn(directions, batch, h_out), randn(directions, batch, hidden),
             randn(directions, 4 * hidden, input_size), randn(directions, 4 * hidden, h_out),
             randn(directions, 4 * hidden), w_hr, lengths)  # fmt: skip
    grads = (
        randn(seq_len, batch, directions * h_out),
        randn(directions, batch, h_out),
        randn(directions, batch, hidden),
    )
    return layer, grads


def _count(seq_len, case, device, monkeypatch):
    """(forward ops, forward launches, backward ops, backward launches) of one call of each launcher."""
    directions, proj_size, ragged, save = CASES[case]
    (x, h0, c0, w_ih, w_hh, bias, w_hr, lengths), (d_out, d_h_n, d_c_n) = _layer(
        seq_len, directions, proj_size, ragged, device
    )
    counter = OpCounter()
    run = TritonOnly(monkeypatch, around_launch=counter.hidden)
    with run():
        with counter:
            *_, saved = launch.step_forward(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, save=save)
        forward_ops, counter.ops = counter.ops, collections.Counter()
        forward_launches = run.launches["forward"]
        if not save:
            return forward_ops, forward_launches, collections.Counter(), 0
        with counter:
            launch.step_backward(d_out, d_h_n, d_c_n, x, h0, c0, w_ih, w_hh, w_hr, saved, lengths)
    return forward_ops, forward_launches, counter.ops, run.launches["backward"]


def _per_step(short, long):
    """The ops whose count grows from T = SHORT to T = LONG, and how much they grow per step."""
    grown = long.copy()
    grown.subtract(short)
    return {op: count / (LONG - SHORT) for op, count in grown.items() if count}


@pytest.mark.parametrize("case", list(CASES))
def test_one_launch_and_no_torch_op_per_step(case, device, monkeypatch):
    short = _count(SHORT, case, device, monkeypatch)
    long = _count(LONG, case, device, monkeypatch)
    forward_ops, backward_ops = _per_step(short[0], long[0]), _per_step(short[2], long[2])
    assert not forward_ops, f"torch ops per forward step: {forward_ops}"
    assert not backward_ops, f"torch ops per backward step: {backward_ops}"
    assert (long[1] - short[1]) / (LONG - SHORT) == 1, f"forward launches {short[1]} (T={SHORT}), {long[1]} (T={LONG})"
    assert short[1] == SHORT
    if CASES[case][3]:
        assert (long[3] - short[3]) / (LONG - SHORT) == 1, f"backward launches {short[3]}, {long[3]}"
        assert short[3] == SHORT
    # The fixed cost: the same handful of ops whatever T (printed with -s for the record).
    print(f"{case}: forward {sum(short[0].values())} ops a call, backward {sum(short[2].values())}")


def test_module_launches_one_kernel_per_step_and_layer(device, monkeypatch):
    """Through the module and its custom operators: one launch per step and layer, forward and backward."""
    torch.manual_seed(0)
    module = triton_lstm.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4, device=device, kernel="step")
    counts = {}
    for seq_len in (SHORT, LONG):
        x = torch.randn(seq_len, 2, 3, device=device, requires_grad=True)
        with TritonOnly(monkeypatch)() as run:
            output, (h_n, c_n) = module(x)
            (output.sum() + h_n.sum() + c_n.sum()).backward()
        counts[seq_len] = dict(run.launches)
    assert counts[SHORT] == {"forward": 2 * SHORT, "backward": 2 * SHORT}
    assert counts[LONG] == {"forward": 2 * LONG, "backward": 2 * LONG}


# ---------------------------------------------------------------------------------------------------------------
# The lean launch, with stand-ins for the compiled kernel (no GPU)
# ---------------------------------------------------------------------------------------------------------------


class Launcher36:
    """Triton 3.6's CudaLauncher call signature (everything after ``function`` goes to generated C)."""

    def __init__(self):
        self.calls = []

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):
        self.calls.append((gridX, gridY, gridZ, stream, function, *args))


class Launcher39:
    """Triton 3.9's CudaLauncher call signature."""

    def __init__(self):
        self.calls = []

    def __call__(self, gridX, gridY, gridZ, stream, function, kernel_metadata, launch_metadata, launch_enter_hook,
                 launch_exit_hook, *args):  # fmt: skip
        self.calls.append((gridX, gridY, gridZ, stream, function, kernel_metadata, launch_metadata,
                           launch_enter_hook, launch_exit_hook, *args))  # fmt: skip


class LauncherOther:
    def __call__(self, grid, stream, function, *args):
        pass


def _compiled(run):
    return SimpleNamespace(run=run, function=0xF00, packed_metadata=("meta",), src=SimpleNamespace(fn=None))


class StandInKernel:
    """``kernel[grid](*args, **meta)`` as Triton's path does it: the grid gets the bound arguments (every parameter,
    constexprs included, in order); returns the 'compiled kernel'. Records every launch."""

    params = ("a_ptr", "b_ptr", "step", "n", "BLOCK")

    def __init__(self, compiled):
        self.compiled = compiled
        self.launches = []

    def __getitem__(self, grid):
        def run(*args, **meta):
            bound = dict(zip(self.params, [*args, meta["BLOCK"]], strict=True))
            self.launches.append((grid(bound), bound["step"]))
            return self.compiled

        return run


@pytest.fixture
def on_cuda(monkeypatch):
    """fast_launch believes CPU tensors are on CUDA and that the current stream is 77."""
    monkeypatch.setattr(fast_launch, "_on_cuda", lambda tensors: True)
    monkeypatch.setattr(fast_launch, "_current_stream", lambda: 77)


def _steps(launcher_cls, lean=True, monkeypatch=None):
    a, b = torch.zeros(4), torch.zeros(8)
    run = launcher_cls()
    kernel = StandInKernel(_compiled(run))
    if monkeypatch is not None:
        monkeypatch.setattr(fast_launch, "LEAN", lean)
    launcher = fast_launch.StepLauncher("k", kernel, lambda m: (3, m["n"] // 2), [a, b, 0, 6], 2, "step",
                                        {"BLOCK": 32})  # fmt: skip
    launcher.run(range(5))
    return a, b, kernel, run


@pytest.mark.parametrize("launcher_cls", [Launcher36, Launcher39], ids=["triton36", "triton39"])
def test_lean_launch_calls_the_compiled_launcher_as_jit_run_does(launcher_cls, on_cuda):
    a, b, kernel, run = _steps(launcher_cls)
    assert kernel.launches == [((3, 3), 0)], "only the first step goes through Triton's path"
    head = (3, 3, 1, 77, 0xF00, ("meta",), None, None, None)
    expected = [(*head, a.data_ptr(), b.data_ptr(), step, 6, 32) for step in range(1, 5)]
    assert run.calls == expected


def test_lean_launch_not_used_where_it_cannot_apply(on_cuda, monkeypatch):
    # Switched off, an unknown launcher convention, a launch hook (a profiler must see every launch): every step
    # goes through Triton's own path.
    _, _, kernel, run = _steps(Launcher39, lean=False, monkeypatch=monkeypatch)
    assert len(kernel.launches) == 5 and not run.calls
    monkeypatch.setattr(fast_launch, "LEAN", True)
    _, _, kernel, _ = _steps(LauncherOther)
    assert len(kernel.launches) == 5
    hooks = pytest.importorskip("triton").knobs.runtime.launch_enter_hook
    hooks.add(print)
    try:
        _, _, kernel, run = _steps(Launcher39)
    finally:
        hooks.remove(print)
    assert len(kernel.launches) == 5 and not run.calls


def test_lean_launch_needs_cuda_tensors_and_a_compiled_kernel(monkeypatch):
    monkeypatch.setattr(fast_launch, "_current_stream", lambda: 77)
    _, _, kernel, run = _steps(Launcher39)  # CPU tensors
    assert len(kernel.launches) == 5 and not run.calls
    recorder = fast_launch._GridRecorder(lambda m: (1,))
    recorder({"step": 0})
    assert fast_launch.adapt("k", None, recorder, "step") is None  # the interpreter returns no compiled kernel


def test_launcher_conventions_of_the_installed_triton():
    """The installed Triton's real launcher class has one of the two conventions the lean launch knows."""
    driver = pytest.importorskip("triton.backends.nvidia.driver")
    signature = inspect.signature(driver.CudaLauncher.__call__)
    assert next(iter(signature.parameters)) == "self"

    class Bound:  # the signature of an instance, as adapt inspects it
        __call__ = driver.CudaLauncher.__call__

    assert fast_launch._launcher_convention_known(Bound())
    assert fast_launch._launcher_convention_known(Launcher36())
    assert fast_launch._launcher_convention_known(Launcher39())
    assert not fast_launch._launcher_convention_known(LauncherOther())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the lean launch runs on CUDA only")
@pytest.mark.parametrize("case", list(CASES))
def test_lean_launches_run_and_match_tritons_path_bitwise(case, monkeypatch):
    directions, proj_size, ragged, save = CASES[case]
    (x, h0, c0, w_ih, w_hh, bias, w_hr, lengths), grads = _layer(LONG, directions, proj_size, ragged, "cuda")
    results = {}
    for lean in (False, True):
        monkeypatch.setattr(fast_launch, "LEAN", lean)
        lean_calls = collections.Counter()
        original = fast_launch.LeanLaunch.__call__

        def counting(launcher, step, calls=lean_calls, original=original):
            calls[launcher.name] += 1
            return original(launcher, step)

        with monkeypatch.context() as patch:
            patch.setattr(fast_launch.LeanLaunch, "__call__", counting)
            output, h_n, c_n, saved = launch.step_forward(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, save=save)
            backward = launch.step_backward(*grads, x, h0, c0, w_ih, w_hh, w_hr, saved, lengths) if save else ()
        results[lean] = [output, h_n, c_n, *(t for t in backward if t is not None)]
        expected = {"step_forward_kernel": LONG - 1, "step_backward_kernel": (LONG - 1) * save} if lean else {}
        assert {k: v for k, v in lean_calls.items() if v} == {k: v for k, v in expected.items() if v}
    for ours, theirs in zip(results[True], results[False], strict=True):
        assert torch.equal(ours, theirs)
