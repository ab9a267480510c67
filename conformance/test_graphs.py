"""CUDA graphs: the per-step kernel's own graph cache (``triton_lstm.graphs``), and our LSTM inside the user's graphs.

Without a GPU the cache runs with a stand-in for ``torch.cuda.CUDAGraph`` whose replay calls the captured loop
again (through the interpreter): everything but the capture itself is the real code path, so these tests check
what the cache is responsible for: static buffers filled from each call (new inputs, weights changed in place or
replaced), results and saved tensors that a later replay cannot overwrite (training with several forwards before a
backward), the first call eager, the bound on entries and bytes, the switch, the key, a failed capture. On CUDA the
same tests run with real graphs, and the user-side captures run: ``torch.cuda.graph`` around forward and backward,
and ``torch.compile(mode="reduce-overhead")``, for both kernels (the persistent one's capture safety is its
launcher's; these tests cover it whatever its launch path).
"""

import contextlib
import os

import pytest
import torch

import triton_lstm
from conformance.helpers import TOLERANCES, TritonOnly, assert_conforms
from triton_lstm import graphs

CUDA = torch.cuda.is_available()
MODULES = {
    "uni": {"input_size": 3, "hidden_size": 5},
    "bi-proj": {"input_size": 3, "hidden_size": 5, "proj_size": 3, "bidirectional": True},
    "two-layers": {"input_size": 3, "hidden_size": 4, "num_layers": 2},
}
SEQ_LEN, BATCH = 5, 3


class ReplayByCalling:
    """Stands in for a captured CUDA graph on the CPU: replaying calls the loop again, its launches hidden from a
    ``TritonOnly`` counter (which counts a replay as the launches captured in it)."""

    counter = None

    def __init__(self, loop):
        self._loop = loop

    def replay(self):
        with self._hidden():
            self._loop()

    @classmethod
    def _hidden(cls):
        if cls.counter is None:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def hidden():
            cls.counter._paused += 1
            try:
                yield
            finally:
                cls.counter._paused -= 1

        return hidden()


@pytest.fixture
def graphed(monkeypatch):
    """Graphs on, an empty cache; on the CPU the stand-in backend. Restores everything after."""
    graphs.clear()
    monkeypatch.setattr(graphs, "ENABLED", True)
    if not CUDA:
        monkeypatch.setattr(graphs, "_usable", lambda like: True)
        monkeypatch.setattr(graphs, "_backend", ReplayByCalling)
        monkeypatch.setattr(ReplayByCalling, "counter", None)
    yield graphs
    graphs.clear()


def _module(name, device, seed=0):
    torch.manual_seed(seed)
    return triton_lstm.LSTM(**MODULES[name], device=device, kernel="step")


def _inputs(module, device, seed, seq_len=SEQ_LEN, batch=BATCH):
    generator = torch.Generator().manual_seed(seed)
    rows = module.num_layers * (2 if module.bidirectional else 1)
    h_out = module.proj_size or module.hidden_size
    x = torch.randn(seq_len, batch, module.input_size, generator=generator).to(device)
    hx = (torch.randn(rows, batch, h_out, generator=generator).to(device),
          torch.randn(rows, batch, module.hidden_size, generator=generator).to(device))  # fmt: skip
    upstream = torch.randn(seq_len, batch, h_out * (2 if module.bidirectional else 1), generator=generator)
    return x, hx, upstream.to(device)


def _run(module, x, hx, upstream):
    """Output, h_n, c_n and the gradients of the input, hx and every parameter."""
    x = x.detach().requires_grad_()
    hx = tuple(t.detach().requires_grad_() for t in hx)
    output, (h_n, c_n) = module(x, hx)
    leaves = [x, *hx, *module.parameters()]
    grads = torch.autograd.grad((output * upstream).sum() + h_n.sum() + c_n.sum(), leaves)
    return [output.detach(), h_n.detach(), c_n.detach(), *grads]


def _eager(module, *args):
    with _graphs_off():
        return _run(module, *args)


@contextlib.contextmanager
def _graphs_off():
    enabled = graphs.ENABLED
    graphs.set_enabled(False)
    try:
        yield
    finally:
        graphs.set_enabled(enabled)


def _assert_same(ours, expected):
    for index, (a, b) in enumerate(zip(ours, expected, strict=True)):
        assert torch.equal(a, b), f"result {index} differs: max |diff| {(a - b).abs().max().item():.3e}"


@pytest.mark.parametrize("name", list(MODULES))
def test_replays_give_the_eager_results_for_new_inputs(name, device, graphed, monkeypatch):
    """Call 1 eager, call 2 captures, calls 3 and 4 replay: each with new inputs, each bitwise the eager result."""
    module = _module(name, device)
    run = TritonOnly(monkeypatch)
    ReplayByCalling.counter = run
    with run():
        for call in range(4):
            args = _inputs(module, device, seed=call)
            _assert_same(_run(module, *args), _eager(module, *args))
    # One forward and one backward graph: the key leaves out the input size (x @ W_ih^T is computed before the
    # graph), so both layers of "two-layers" share them, one after the other.
    assert graphs.cached() == 2
    assert run.by_kernel["step_forward_kernel"] == 8 * SEQ_LEN * module.num_layers  # 4 calls + 4 eager references
    assert run.by_kernel["step_backward_kernel"] == 8 * SEQ_LEN * module.num_layers


def test_graphs_read_the_weights_of_each_call(device, graphed):
    """In-place updates (an optimizer step) and replaced parameters are both seen by the next replay."""
    module = _module("bi-proj", device)
    args = _inputs(module, device, seed=1)
    for _ in range(3):  # eager, capture, replay
        _run(module, *args)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    _run(module, *args)
    for parameter in module.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    _assert_same(_run(module, *args), _eager(module, *args))
    module.weight_hh_l0 = torch.nn.Parameter(torch.randn_like(module.weight_hh_l0))
    module.weight_hr_l0_reverse = torch.nn.Parameter(torch.randn_like(module.weight_hr_l0_reverse))
    _assert_same(_run(module, *args), _eager(module, *args))


def test_saved_tensors_survive_later_replays(device, graphed):
    """Several forwards before their backwards (gradient accumulation, two models sharing sizes): what each forward
    saved for backward, and its outputs, are its own, not static buffers a later replay overwrote."""
    module = _module("uni", device)
    calls = [_inputs(module, device, seed=seed) for seed in range(5)]
    expected = [_eager(module, *args) for args in calls]
    for args in calls[:2]:  # eager, capture: the next forwards replay
        _run(module, *args)
    pending = []
    for args in calls:
        x = args[0].detach().requires_grad_()
        output, (h_n, c_n) = module(x, args[1])
        pending.append((x, output, h_n, c_n, args[2]))
    for (x, output, h_n, c_n, upstream), reference in zip(pending, expected, strict=True):
        _assert_same([output.detach(), h_n.detach(), c_n.detach()], reference[:3])
        (grad_x,) = torch.autograd.grad((output * upstream).sum() + h_n.sum() + c_n.sum(), x)
        _assert_same([grad_x], reference[3:4])


def test_variable_lengths_are_graphed_per_key(device, graphed):
    module = _module("bi-proj", device)
    x, hx, _ = _inputs(module, device, seed=2)
    for lengths in ([5, 3, 2], [4, 4, 1], [5, 1, 1]):  # the same key (T, B): one graph, new lengths each call
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        ours = module(packed, hx)
        with _graphs_off():
            theirs = module(packed, hx)
        _assert_same([ours[0].data, *ours[1]], [theirs[0].data, *theirs[1]])
    assert graphs.cached() == 1, "one forward graph (no backward ran)"


def test_cache_is_bounded_switchable_and_clearable(device, graphed, monkeypatch):
    monkeypatch.setattr(graphs, "CACHE_SIZE", 2)
    module = _module("uni", device)
    with torch.no_grad():
        for seq_len in (2, 3, 4, 2, 3, 4):  # every T seen twice: three captures, two kept
            module(_inputs(module, device, seed=0, seq_len=seq_len)[0])
    assert graphs.cached() == 2
    assert [key[1] for key in graphs._graphs] == [3, 4], "least recently used dropped first"
    graphs.set_enabled(False)
    with torch.no_grad():
        for _ in range(3):
            module(_inputs(module, device, seed=0, seq_len=7)[0])
    assert all(key[1] != 7 for key in graphs._graphs)
    graphs.clear()
    assert graphs.cached() == 0


def test_large_problems_and_other_captures_run_eagerly(device, graphed, monkeypatch):
    module = _module("uni", device)
    monkeypatch.setattr(graphs, "MAX_BYTES", 1)
    with torch.no_grad():
        for _ in range(3):
            module(_inputs(module, device, seed=0)[0])
    assert graphs.cached() == 0


def test_a_failed_capture_warns_once_and_runs_eagerly(device, graphed, monkeypatch):
    def failing(loop):
        raise RuntimeError("capture refused")

    monkeypatch.setattr(graphs, "_backend", failing)
    module = _module("uni", device)
    args = _inputs(module, device, seed=3)
    with torch.no_grad(), _graphs_off():
        expected = module(args[0], args[1])
    with torch.no_grad():
        module(args[0], args[1])
        with pytest.warns(UserWarning, match="capture failed"):
            ours = module(args[0], args[1])
        again = module(args[0], args[1])
    _assert_same([ours[0], *ours[1]], [expected[0], *expected[1]])
    _assert_same([again[0], *again[1]], [expected[0], *expected[1]])
    assert graphs.cached() == 0


def test_graphs_are_off_by_default():
    switched_on = os.environ.get("TRITON_LSTM_CUDA_GRAPHS") == "1"
    assert graphs.ENABLED is switched_on


# ---------------------------------------------------------------------------------------------------------------
# Our LSTM inside the user's graphs (CUDA only)
# ---------------------------------------------------------------------------------------------------------------

cuda_only = pytest.mark.skipif(not CUDA, reason="CUDA graph capture needs a GPU")
KERNELS = ("step", "persistent")


def _user_module(kernel, dtype):
    torch.manual_seed(0)
    return triton_lstm.LSTM(16, 32, num_layers=2, bidirectional=True, device="cuda", dtype=dtype, kernel=kernel)


def _close(name, ours, theirs):
    tol = TOLERANCES[theirs.dtype]
    torch.testing.assert_close(ours, theirs, atol=tol.atol, rtol=tol.rtol, msg=lambda m: f"{name}: {m}")


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_user_cuda_graph_captures_forward_and_backward(kernel, dtype):
    """The whole training step in one ``torch.cuda.graph``: replays with new inputs give the eager results."""
    module = _user_module(kernel, dtype)
    params = list(module.parameters())
    static_x = torch.randn(12, 8, 16, device="cuda", dtype=dtype)
    static_upstream = torch.randn(12, 8, 64, device="cuda", dtype=dtype)

    def step():
        x = static_x.detach().requires_grad_()
        output, (h_n, c_n) = module(x)
        grads = torch.autograd.grad((output * static_upstream).sum() + h_n.sum() + c_n.sum(), [x, *params])
        return [output, h_n, c_n, *grads]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: compiles and tunes every kernel outside the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_results = step()
    for seed in range(3):
        generator = torch.Generator(device="cuda").manual_seed(seed)
        static_x.copy_(torch.randn(static_x.shape, device="cuda", generator=generator))
        static_upstream.copy_(torch.randn(static_upstream.shape, device="cuda", generator=generator))
        graph.replay()
        expected = step()
        for index, (ours, theirs) in enumerate(zip(static_results, expected, strict=True)):
            _close(f"replay {seed}, result {index}", ours, theirs)


@cuda_only
@pytest.mark.parametrize("kernel", KERNELS)
def test_torch_compile_reduce_overhead(kernel, monkeypatch):
    """``torch.compile(mode="reduce-overhead")`` (CUDA graph trees around our custom ops): forward and backward
    over several steps give the eager results, and the Triton kernels ran."""
    module = _user_module(kernel, torch.float32)
    compiled = torch.compile(module, mode="reduce-overhead", fullgraph=True)
    for seed in range(4):
        generator = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(12, 8, 16, device="cuda", generator=generator)
        upstream = torch.randn(12, 8, 64, device="cuda", generator=generator)
        results = []
        for model in (compiled, module):
            leaf = x.clone().requires_grad_()
            output, (h_n, c_n) = model(leaf)
            loss = (output * upstream).sum() + h_n.sum() + c_n.sum()
            grads = torch.autograd.grad(loss, [leaf, *module.parameters()])
            results.append([t.detach().clone() for t in (output, h_n, c_n, *grads)])
        for index, (ours, theirs) in enumerate(zip(*results, strict=True)):
            _close(f"step {seed}, result {index}", ours, theirs)


@cuda_only
def test_internal_graphs_inside_a_user_capture_stay_off(graphed):
    """With the cache on, a call inside someone else's capture launches into that capture, graphing nothing."""
    module = _user_module("step", torch.float32)
    x = torch.randn(6, 4, 16, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            module(x)
        before = graphs.cached()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = module(x)
        graph.replay()
        assert graphs.cached() == before
        assert_conforms("output", static[0], module(x)[0])
