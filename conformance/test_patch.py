"""Patch mode (``triton_lstm.patch``): torch.nn.LSTM instances, subclasses included, run on the Triton kernels.

The same torch.nn.LSTM instance runs unpatched (torch's own LSTM: the reference) and patched (``triton_lstm``'s
kernels, proven by ``triton_only``), and the two are compared under the per-dtype tolerances of ``helpers``: a
pairwise matrix of modes at every dtype and both kernels, unbatched and packed input, errors, a model built on an
nn.LSTM subclass with its own forward (as pytorch-forecasting's models are). Then what patching must leave alone:
the class, parameters, state_dict, pickles, torch's own forward after ``unpatch``, and what nesting and threads see.
"""

import copy
import os
import pathlib
import pickle
import re
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import triton_lstm
from conformance import test_api
from conformance.helpers import FLOAT64_REFERENCED, TritonOnly, assert_conforms, float64_twin, forward_and_grads
from conformance.matrix import DTYPES, FACTORS, KERNELS, Case, all_pairs, shape_cases
from conformance.test_matrix import _inputs, _seed
from triton_lstm import tuning

TORCH_FORWARD = nn.LSTM.__dict__["forward"]
REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


@pytest.fixture(autouse=True)
def _unpatched_after():
    """Every test starts and ends with torch's own forward, whatever happens in between."""
    assert not triton_lstm.is_patched()
    yield
    triton_lstm.unpatch()
    assert nn.LSTM.__dict__["forward"] is TORCH_FORWARD


def _run(module, x, hx, upstream, **kwargs):
    return forward_and_grads(module, x, hx, upstream, **kwargs)


def _assert_conforms(ours, theirs, ref64):
    for name, value in ours.outputs.items():
        assert_conforms(name, value, theirs.outputs[name], ref64.outputs.get(name) if ref64 else None)
    assert ours.grads.keys() == theirs.grads.keys()
    for name, value in ours.grads.items():
        assert_conforms(f"grad {name}", value, theirs.grads[name], ref64.grads.get(name) if ref64 else None)


def _assert_ran(launches, kernel):
    assert launches.by_kernel[f"{kernel}_forward_kernel"] > 0
    assert launches.by_kernel[f"{kernel}_backward_kernel"] > 0


# ---------------------------------------------------------------------------------------------------------------
# The same instance, unpatched and patched


def _cases():
    """Every pair of mode factor values at every dtype and kernel, plus the unbatched shapes."""
    cases = [
        Case(**row, dtype=dtype, kernel=kernel) for kernel in KERNELS for dtype in DTYPES for row in all_pairs(FACTORS)
    ]
    return cases + [case for case in shape_cases() if case.unbatched]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.id)
def test_patched_instance_matches_its_unpatched_self(case, device, triton_only):
    generator = torch.Generator().manual_seed(_seed(case))
    torch.manual_seed(0)
    module = nn.LSTM(**case.module_kwargs, device=device, dtype=case.dtype)
    x, hx, upstream = _inputs(case, device, generator)
    theirs = _run(module, x, hx, upstream)
    ref64 = None
    if case.dtype in FLOAT64_REFERENCED:
        ref64 = _run(float64_twin(module), x.double(), tuple(t.double() for t in hx) if hx else None, upstream)
    with triton_lstm.patched(case.kernel), triton_only() as launches:
        ours = _run(module, x, hx, upstream)
    _assert_ran(launches, case.kernel)
    _assert_conforms(ours, theirs, ref64)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_patched_packed_input_matches_torch(kernel, dtype, device, triton_only):
    torch.manual_seed(0)
    module = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3, batch_first=True, device=device,
                     dtype=dtype)  # fmt: skip
    generator = torch.Generator().manual_seed(3)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    lengths = torch.tensor([5, 2, 7, 1])
    x, hx = randn(4, 7, 4), (randn(4, 4, 3), randn(4, 4, 6))
    upstream = (randn(int(lengths.sum()), 6), randn(4, 4, 3), randn(4, 4, 6))
    packing = {"lengths": lengths, "enforce_sorted": False}
    theirs = _run(module, x, hx, upstream, **packing)
    ref64 = None
    if dtype in FLOAT64_REFERENCED:
        ref64 = _run(float64_twin(module), x.double(), tuple(t.double() for t in hx), upstream, **packing)
    with triton_lstm.patched(kernel), triton_only() as launches:
        ours = _run(module, x, hx, upstream, **packing)
    _assert_ran(launches, kernel)
    _assert_conforms(ours, theirs, ref64)
    assert ours.packing[0].equal(theirs.packing[0])
    assert all(a.equal(b) for a, b in zip(ours.packing[1:], theirs.packing[1:], strict=True))


@pytest.mark.parametrize(("kwargs", "call"), test_api.FORWARD_ERRORS)
def test_patched_errors_are_torchs(kwargs, call):
    expected = test_api.raised_by(lambda: call(test_api.build_pair(test_api.IN, test_api.H, **kwargs)[1]))
    module = test_api.build_pair(test_api.IN, test_api.H, **kwargs)[1]
    with triton_lstm.patched(), pytest.raises(type(expected), match=test_api.exactly(str(expected))):
        call(module)


def test_kernel_rules_are_the_modules(monkeypatch):
    """Without the interpreter, CPU tensors fall back to torch under "auto" and a named kernel raises; an unknown
    kernel is refused by patch() itself, which then leaves everything as it was."""
    module = nn.LSTM(3, 5)
    x = torch.randn(4, 2, 3)
    expected = module(x)[0]
    with pytest.raises(ValueError, match="kernel must be one of 'auto', 'step', 'persistent'; got 'fast'"):
        triton_lstm.patch(kernel="fast")
    assert not triton_lstm.is_patched()
    monkeypatch.setattr(tuning, "INTERPRETED", False)
    with triton_lstm.patched("auto"):
        torch.testing.assert_close(module(x)[0], expected, rtol=0, atol=0)  # torch's own LSTM
    with triton_lstm.patched("step"), pytest.raises(RuntimeError, match="kernel='step' cannot run on cpu tensors"):
        module(x)


# ---------------------------------------------------------------------------------------------------------------
# A subclass with its own forward, in a model (the pattern of pytorch-forecasting's RecurrentNetwork and DeepAR)


class LengthsLSTM(nn.LSTM):
    """As pytorch-forecasting's ``LSTM``: its own forward takes ``lengths`` and packs, then calls nn.LSTM's forward;
    it adds a method its model uses."""

    def forward(self, x, hx=None, lengths=None, enforce_sorted=True):
        if lengths is None:
            return super().forward(x, hx)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=self.batch_first, enforce_sorted=enforce_sorted)
        output, state = super().forward(packed, hx)
        return pad_packed_sequence(output, batch_first=self.batch_first)[0], state

    def init_hidden_state(self, x):
        rows = self.num_layers * (2 if self.bidirectional else 1)
        batch = x.size(0) if self.batch_first else x.size(1)
        zeros = torch.zeros(rows, batch, self.hidden_size, device=x.device, dtype=x.dtype)
        return zeros, zeros.clone()


class EncoderDecoder(nn.Module):
    """Encoder over the history (variable lengths), decoder over the horizon from the encoder's state."""

    def __init__(self):
        super().__init__()
        self.encoder = LengthsLSTM(3, 8, num_layers=2, batch_first=True)
        self.decoder = LengthsLSTM(3, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, history, lengths, future):
        _, state = self.encoder(history, self.encoder.init_hidden_state(history), lengths=lengths,
                                enforce_sorted=False)  # fmt: skip
        output, _ = self.decoder(future, state)
        return self.head(output)


@pytest.mark.parametrize("kernel", KERNELS)
def test_model_on_a_subclass_with_its_own_forward_runs_the_kernels(kernel, device, triton_only):
    torch.manual_seed(0)
    model = EncoderDecoder().to(device)
    history, future = torch.randn(4, 9, 3, device=device), torch.randn(4, 5, 3, device=device)
    lengths = torch.tensor([9, 4, 6, 2])

    def loss_and_grads():
        loss = model(history, lengths, future).square().mean()
        return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))

    expected_loss, expected_grads = loss_and_grads()
    with triton_lstm.patched(kernel), triton_only() as launches:
        loss, grads = loss_and_grads()
    _assert_ran(launches, kernel)
    assert_conforms("loss", loss, expected_loss)
    for (name, _), got, want in zip(model.named_parameters(), grads, expected_grads, strict=True):
        assert_conforms(f"grad {name}", got, want)
    assert type(model.encoder) is LengthsLSTM and isinstance(model.encoder, nn.LSTM)


def test_convert_and_from_torch_say_what_they_cannot_do_with_the_subclass():
    model = EncoderDecoder()
    with pytest.warns(UserWarning, match=r"convert left conformance\.test_patch\.LengthsLSTM unconverted: .*patch\(\)"):
        triton_lstm.convert(model)
    assert type(model.encoder) is LengthsLSTM
    message = (
        "from_torch would drop LengthsLSTM.forward: LengthsLSTM is a subclass of torch.nn.LSTM with its own forward"
    )
    with pytest.raises(TypeError, match=message):
        triton_lstm.LSTM.from_torch(model.encoder)


# ---------------------------------------------------------------------------------------------------------------
# What patching leaves alone


def test_patch_keeps_the_class_parameters_state_dict_and_pickles():
    torch.manual_seed(0)
    module = nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    parameters = list(module.parameters())
    state = copy.deepcopy(module.state_dict())
    pickled = pickle.dumps(module)
    with triton_lstm.patched():
        assert type(module) is nn.LSTM and isinstance(module, nn.RNNBase)
        assert all(a is b for a, b in zip(module.parameters(), parameters, strict=True))
        assert module.state_dict().keys() == state.keys()
        assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())
        assert pickle.dumps(module) == pickled
        assert module.flatten_parameters() is None  # torch's own, untouched
        copied = copy.deepcopy(module)
        assert type(copied) is nn.LSTM
        assert all(torch.equal(a, b) for a, b in zip(copied.parameters(), parameters, strict=True))


def test_unpatch_restores_torchs_own_function_and_nesting_restores_the_outer_kernel(monkeypatch):
    module, x = nn.LSTM(3, 5), torch.randn(4, 2, 3)

    def ran(kernel):
        """Whether a forward call now launches ``kernel``'s forward kernel (and no other)."""
        with TritonOnly(monkeypatch)() as launches:
            module(x)
        other = "persistent" if kernel == "step" else "step"
        return launches.by_kernel[f"{kernel}_forward_kernel"] > 0 == launches.by_kernel[f"{other}_forward_kernel"]

    triton_lstm.unpatch()  # nothing to do
    assert nn.LSTM.__dict__["forward"] is TORCH_FORWARD
    triton_lstm.patch("step")
    triton_lstm.patch("step")  # twice: still one patch, torch's function remembered once
    assert triton_lstm.is_patched() and ran("step")
    with triton_lstm.patched("persistent"):
        assert ran("persistent")
        with triton_lstm.patched("step"):
            assert ran("step")
        assert ran("persistent")
    assert triton_lstm.is_patched() and ran("step")  # patched before the block: it stays so
    triton_lstm.unpatch()
    assert nn.LSTM.__dict__["forward"] is TORCH_FORWARD and not triton_lstm.is_patched()
    with triton_lstm.patched():
        pass
    assert nn.LSTM.__dict__["forward"] is TORCH_FORWARD
    with pytest.raises(KeyError), triton_lstm.patched():
        raise KeyError("the block fails")
    assert nn.LSTM.__dict__["forward"] is TORCH_FORWARD


def test_modules_built_before_and_after_patch_and_functional_call(triton_only):
    torch.manual_seed(0)
    before = nn.LSTM(3, 5)
    x = torch.randn(4, 2, 3)
    other = nn.LSTM(3, 5)
    expected, expected_other = before(x)[0], other(x)[0]
    with triton_lstm.patched("step"), triton_only() as launches:
        after = nn.LSTM(3, 5)
        after.load_state_dict(before.state_dict())
        assert_conforms("built before", before(x)[0], expected)
        assert_conforms("built after", after(x)[0], expected)
        # torch's own _flat_weights refresh: the given weights, then the module's own again.
        swapped = torch.func.functional_call(before, dict(other.named_parameters()), (x,))[0]
        assert_conforms("functional_call", swapped, expected_other)
        assert_conforms("own weights again", before(x)[0], expected)
    assert launches.by_kernel["step_forward_kernel"] > 0


def test_threads_running_while_patched_run_the_kernels(triton_only):
    torch.manual_seed(0)
    modules = [nn.LSTM(3, 5), nn.LSTM(4, 6, bidirectional=True)]
    inputs = [torch.randn(4, 2, 3), torch.randn(3, 2, 4)]
    expected = [m(x)[0] for m, x in zip(modules, inputs, strict=True)]
    results, failures = {}, []

    def work(index):
        try:
            results[index] = modules[index](inputs[index])[0]
        except Exception as error:  # reported by the main thread
            failures.append(error)

    with triton_lstm.patched("step"), triton_only() as launches:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not failures, failures
    for index, want in enumerate(expected):
        assert_conforms(f"thread {index}", results[index], want)
    assert launches.by_kernel["step_forward_kernel"] > 0


def test_torch_compile_runs_the_patched_module_eagerly(triton_only):
    """Dynamo does not trace nn.LSTM: it breaks the graph there and runs the module eagerly, patched forward
    included; with fullgraph=True it refuses (convert the model instead)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 5))
    x = torch.randn(4, 2, 3)
    expected = model(x)[0]
    with triton_lstm.patched("step"), triton_only() as launches:
        got = torch.compile(model, backend="aot_eager")(x)[0]
        assert_conforms("compiled", got, expected)
        assert launches.by_kernel["step_forward_kernel"] > 0
        torch._dynamo.reset()
        with pytest.raises(Exception, match="Attempted to wrap RNN, GRU, or LSTM"):
            torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    torch._dynamo.reset()


def test_package_exports_patch_mode():
    assert {"patch", "unpatch", "patched", "is_patched"} <= set(triton_lstm.__all__)


def test_train_char_lm_example_runs_patched():
    """The example's ``--via patch``: the model keeps torch.nn.LSTM, trained under ``triton_lstm.patched()``."""
    sizes = ["--steps", "3", "--seq-len", "6", "--batch", "3", "--hidden", "8", "--embed", "4", "--sample", "0"]
    command = [sys.executable, str(REPO / "examples" / "train_char_lm.py"), "--impl", "both", "--via", "patch", *sizes]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = re.search(r"^compare: torch final loss (\S+) .* triton final loss (\S+) ", done.stdout, re.MULTILINE)
    assert losses, done.stdout
    assert abs(float(losses[1]) - float(losses[2])) < 1e-3, done.stdout
