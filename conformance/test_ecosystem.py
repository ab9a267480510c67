"""triton_lstm in the PyTorch ecosystem: torch.compile, autocast, model conversion, DDP, torch.func, the example.

Compiled results are compared with eager ones (the conformance matrix compares eager with torch.nn.LSTM);
autocast results with torch.nn.LSTM under the same autocast, by the half-precision rule of ``helpers``. DDP runs two
gloo processes on CPU tensors through the interpreter, and the example script runs as a user would run it.
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils.rnn import pack_padded_sequence

import triton_lstm
from conformance import ddp_worker
from conformance.helpers import assert_conforms, float64_twin
from triton_lstm import autograd, ops, tuning

# torch warns once per process that oneDNN cannot run projections; which test sees it depends on the order.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

# Small sizes: input (IN) 3, hidden 5, projection 2, 4 steps, batch 2.
IN, H, P, T, B = 3, 5, 2, 4, 2
REPO = Path(__file__).resolve().parents[1]

# CPU tensors run the Triton kernels only under the interpreter; elsewhere (a GPU machine) they fall back to torch.
cpu_triton = pytest.mark.skipif(not tuning.INTERPRETED, reason="CPU tensors run Triton only under the interpreter")


def build_pair(*args, device="cpu", **kwargs):
    """(ours, torch's) from the same arguments and the same initial weights."""
    torch.manual_seed(0)
    theirs = nn.LSTM(*args, device=device, **kwargs)
    return triton_lstm.LSTM.from_torch(theirs), theirs


def random_hx(module, batch, device, dtype=torch.float32):
    rows = module.num_layers * (2 if module.bidirectional else 1)
    h_out = module.proj_size or module.hidden_size
    return (torch.randn(rows, batch, h_out, device=device, dtype=dtype, requires_grad=True),
            torch.randn(rows, batch, module.hidden_size, device=device, dtype=dtype, requires_grad=True))  # fmt: skip


def run_and_grad(module, x, hx, leaves, seed=0):
    """Outputs (output, h_n, c_n) of ``module(x, hx)`` and the gradients w.r.t. ``leaves`` of a random projection
    of them (the same projection for the same seed and shapes)."""
    output, (h_n, c_n) = module(x, hx)
    outputs = (output, h_n, c_n)
    generator = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=generator).to(o)).sum() for o in outputs)
    return outputs, torch.autograd.grad(loss, leaves)


def assert_all_conform(label, ours, theirs, ref64=None):
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert_conforms(f"{label}[{index}]", a, b, None if ref64 is None else ref64[index])


@pytest.fixture
def fresh_dynamo():
    """Compiled code and its guards belong to one test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def save_flags(monkeypatch):
    """The ``save`` argument of every forward launch while the test runs, whichever kernel runs."""
    flags = []

    def recording(launcher):
        def launch(*args, save, **kwargs):
            flags.append(save)
            return launcher(*args, save=save, **kwargs)

        return launch

    for name, launcher in list(autograd.FORWARD_LAUNCHERS.items()):
        monkeypatch.setitem(autograd.FORWARD_LAUNCHERS, name, recording(launcher))
    return flags


# ---------------------------------------------------------------------------------------------------------------
# Custom operators and torch.compile


def _op_args(bias, proj, lengths, save):
    """Arguments of ``ops.layer_forward`` for a bidirectional layer (leaves require grad when ``save``)."""
    h_out, d = (P if proj else H), 2

    def leaf(*shape):
        return torch.randn(*shape, requires_grad=save)

    return [leaf(T, B, IN), leaf(d, B, h_out), leaf(d, B, H), leaf(d, 4 * H, IN), leaf(d, 4 * H, h_out),
            leaf(d, 4 * H) if bias else None, leaf(d, 4 * H) if bias else None, leaf(d, h_out, H) if proj else None,
            torch.tensor([T, T - 2], dtype=torch.int32) if lengths else None, "step", save]  # fmt: skip


@cpu_triton
@pytest.mark.parametrize(
    ("bias", "proj", "lengths", "save"),
    [
        pytest.param(True, True, False, True, id="bias-proj-train"),
        pytest.param(False, False, True, True, id="nobias-lengths-train"),
        pytest.param(True, False, False, False, id="bias-inference"),
    ],
)
def test_layer_ops_pass_opcheck(bias, proj, lengths, save):
    """torch.library.opcheck: schema, fake implementations against real outputs (shapes, dtypes, strides), the
    autograd registration, and tracing by AOTAutograd with dynamic shapes; for the forward and backward ops."""
    args = _op_args(bias, proj, lengths, save)
    torch.library.opcheck(ops.layer_forward, args)
    if save:
        x, h0, c0, w_ih, w_hh, _, _, w_hr, lengths_arg, kernel, _ = args
        output, h_n, c_n, hs, gates, cs = ops.layer_forward(*args)
        grads = [torch.randn_like(t) for t in (output, h_n, c_n)]
        detached = [t.detach() if t is not None else None for t in (x, h0, c0, w_ih, w_hh, w_hr)]
        backward_args = [*grads, *detached, hs.detach(), gates.detach(), cs.detach(), lengths_arg, kernel]
        torch.library.opcheck(ops.layer_backward, backward_args)


COMPILE_CASES = [
    pytest.param("aot_eager", {"num_layers": 2, "bidirectional": True, "proj_size": P, "batch_first": True},
                 id="aot_eager-L2-bidir-proj-batch_first"),
    pytest.param("aot_eager", {"bias": False}, id="aot_eager-L1-nobias"),
    pytest.param("inductor", {"num_layers": 2, "bidirectional": True}, id="inductor-L2-bidir"),
]  # fmt: skip


@pytest.mark.parametrize(("backend", "config"), COMPILE_CASES)
def test_compile_fullgraph_matches_eager(backend, config, device, fresh_dynamo):
    """torch.compile(fullgraph=True) traces the module, forward and backward, and computes what eager does."""
    ours, _ = build_pair(IN, H, device=device, **config)
    compiled = torch.compile(ours, fullgraph=True, backend=backend)
    # The second sequence length makes the compiler retrace with a symbolic T: the fake implementations' job.
    for seq_len in (T, T + 3):
        shape = (B, seq_len, IN) if ours.batch_first else (seq_len, B, IN)
        x = torch.randn(shape, device=device, requires_grad=True)
        hx = random_hx(ours, B, device)
        leaves = [x, *hx, *ours.parameters()]
        expected, expected_grads = run_and_grad(ours, x, hx, leaves)
        got, got_grads = run_and_grad(compiled, x, hx, leaves)
        assert_all_conform(f"T={seq_len} outputs", got, expected)
        assert_all_conform(f"T={seq_len} grads", got_grads, expected_grads)


@pytest.mark.parametrize(
    ("kernel", "config"),
    [("step", {"bidirectional": True, "proj_size": P}), ("persistent", {"num_layers": 3})],
    ids=["step-bidir-proj", "persistent-L3"],
)
def test_compile_with_frozen_weights_matches_torch(kernel, config, device, fresh_dynamo):
    """A frozen LSTM behind trainable layers (every weight requires_grad=False, the input trainable) compiles with
    fullgraph=True; the stacked weights of two directions or of a stacked launch take no autograd node then."""
    _, theirs = build_pair(IN, H, device=device, **config)
    theirs.requires_grad_(False)
    compiled = torch.compile(triton_lstm.LSTM.from_torch(theirs, kernel=kernel), fullgraph=True, backend="aot_eager")
    x = torch.randn(T, B, IN, device=device, requires_grad=True)
    expected, expected_grads = run_and_grad(theirs, x, None, [x])
    got, got_grads = run_and_grad(compiled, x, None, [x])
    assert_all_conform("outputs", got, expected)
    assert_all_conform("grads", got_grads, expected_grads)


def test_compiled_inference_saves_nothing(device, fresh_dynamo, save_flags):
    """Under no_grad the compiled graph calls the forward with save=False; with a gradient wanted, save=True."""
    ours, _ = build_pair(IN, H, device=device, num_layers=2)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(T, B, IN, device=device)
    with torch.no_grad():
        inference = compiled(x)[0]
    assert save_flags == [False, False]
    compiled(x)[0].sum().backward()
    assert save_flags == [False, False, True, True]
    assert_conforms("output", inference, ours(x)[0].detach())


@cpu_triton
def test_compiled_packed_input_matches_eager(fresh_dynamo):
    """Packed input compiles with graph breaks (batch_sizes' values set the padded shape), not with fullgraph."""
    ours, _ = build_pair(IN, H, bidirectional=True)
    compiled = torch.compile(ours, backend="aot_eager")
    x = torch.randn(T, 3, IN, requires_grad=True)
    lengths = torch.tensor([T, T - 1, 1])
    got, (h_n, c_n) = compiled(pack_padded_sequence(x, lengths, enforce_sorted=False))
    expected, (h_ref, c_ref) = ours(pack_padded_sequence(x, lengths, enforce_sorted=False))
    assert_all_conform("packed", (got.data, h_n, c_n), (expected.data, h_ref, c_ref))
    (grad,) = torch.autograd.grad(got.data.sum() + c_n.sum(), x)
    (grad_ref,) = torch.autograd.grad(expected.data.sum() + c_ref.sum(), x)
    assert_conforms("packed grad", grad, grad_ref)


def test_double_backward_raises(device):
    ours, _ = build_pair(IN, H, device=device)
    x = torch.randn(T, B, IN, device=device, requires_grad=True)
    (grad,) = torch.autograd.grad(ours(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"^triton_lstm does not support double backward$"):
        grad.sum().backward()


def test_inference_saves_nothing(device, save_flags):
    ours, _ = build_pair(IN, H, device=device, num_layers=2)
    x = torch.randn(T, B, IN, device=device)
    with torch.no_grad():
        ours(x)
    with torch.inference_mode():
        ours(x)
    for p in ours.parameters():
        p.requires_grad_(False)
    ours(x)
    assert save_flags == [False] * 6


# ---------------------------------------------------------------------------------------------------------------
# Autocast


def _autocast_run(module, x, hx, device_type, dtype):
    """Outputs under autocast, and gradients (computed outside it, as training loops do) w.r.t. x, hx, weights."""
    with torch.autocast(device_type, dtype=dtype):
        output, (h_n, c_n) = module(x, hx)
    outputs = (output, h_n, c_n)
    generator = torch.Generator().manual_seed(1)
    loss = sum((o.float() * torch.randn(o.shape, generator=generator).to(o.device)).sum() for o in outputs)
    return outputs, torch.autograd.grad(loss, [x, *hx, *module.parameters()])


def _float64_reference(theirs, x, hx):
    twin = float64_twin(theirs)
    x64 = x.detach().double().requires_grad_()
    hx64 = tuple(h.detach().double().requires_grad_() for h in hx)
    output, (h_n, c_n) = twin(x64, hx64)
    outputs = (output, h_n, c_n)
    generator = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=generator).to(o)).sum() for o in outputs)
    return outputs, torch.autograd.grad(loss, [x64, *hx64, *twin.parameters()])


def _assert_matches_torch_under_autocast(ours, theirs, x, hx, device_type, autocast_dtype):
    got, got_grads = _autocast_run(ours, x, hx, device_type, autocast_dtype)
    expected, expected_grads = _autocast_run(theirs, x, hx, device_type, autocast_dtype)
    ref64, ref64_grads = _float64_reference(theirs, x, hx)
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    assert [t.dtype for t in got_grads] == [t.dtype for t in expected_grads]
    # Weight gradients come back in the weights' float32, but both computed them in half precision: compare them
    # at the precision torch's outputs have.
    low = expected[0].dtype
    assert_all_conform("outputs", got, expected, ref64)
    assert_all_conform("grads", [g.to(low) for g in got_grads], [g.to(low) for g in expected_grads], ref64_grads)


@cpu_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cpu_autocast_matches_torch(dtype):
    """A float32 model given half-precision input under CPU autocast returns outputs, h and c in that dtype, and
    float32 gradients to the float32 weights, like torch.nn.LSTM."""
    ours, theirs = build_pair(IN, H, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, IN, dtype=dtype, requires_grad=True)
    hx = random_hx(ours, B, "cpu", dtype)
    _assert_matches_torch_under_autocast(ours, theirs, x, hx, "cpu", dtype)


@cpu_triton
def test_cpu_autocast_keeps_float32_input_in_float32():
    """torch's CPU LSTM keeps float32 input in float32 under bfloat16 autocast (with oneDNN disabled; with it, the
    result depends on the hardware). Ours computes exactly what it computes without autocast."""
    ours, theirs = build_pair(IN, H)
    x = torch.randn(T, B, IN)
    with torch.backends.mkldnn.flags(enabled=False), torch.autocast("cpu", dtype=torch.bfloat16):
        expected_dtype = theirs(x)[0].dtype
        got = ours(x)
    assert expected_dtype == torch.float32
    assert_all_conform("outputs", (got[0], *got[1]), (ours(x)[0], *ours(x)[1]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_autocast_matches_torch(dtype, device):
    """On CUDA torch runs the LSTM through cuDNN, whose autocast casts it to float16 whatever the autocast dtype."""
    if device.type != "cuda":
        pytest.skip("CUDA autocast needs a GPU")
    ours, theirs = build_pair(IN, H, device=device, num_layers=2)
    x = torch.randn(T, B, IN, device=device, requires_grad=True)
    hx = random_hx(ours, B, device)
    _assert_matches_torch_under_autocast(ours, theirs, x, hx, "cuda", dtype)


@cpu_triton
def test_compile_under_autocast_matches_eager(fresh_dynamo):
    ours, _ = build_pair(IN, H, num_layers=2)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(T, B, IN, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = compiled(x), ours(x)
    assert_all_conform("outputs", (got[0], *got[1]), (expected[0], *expected[1]), (expected[0], *expected[1]))


# ---------------------------------------------------------------------------------------------------------------
# Model conversion


class _LSTMSubclass(nn.LSTM):
    """A subclass may change what forward does, so convert leaves it alone."""


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.LSTM(IN, H, batch_first=True)
        self.blocks = nn.ModuleList([nn.Linear(H, H), nn.LSTM(H, H, num_layers=2, bidirectional=True, proj_size=P)])
        self.again = self.encoder  # one module in two places
        self.custom = _LSTMSubclass(IN, H)

    def forward(self, x):
        encoded, _ = self.encoder(x)
        decoded, (h_n, _) = self.blocks[1](self.blocks[0](encoded).transpose(0, 1))
        return decoded.sum() + h_n.sum() + self.custom(x.transpose(0, 1))[0].sum()


def test_convert_swaps_every_lstm_in_place_with_the_same_parameters(device):
    torch.manual_seed(0)
    model = _Tagger().to(device)
    model.blocks[1].weight_hr_l0.requires_grad_(False)
    model.encoder.eval()
    parameters = dict(model.named_parameters())
    x = torch.randn(B, T, IN, device=device)
    expected = model(x)

    with pytest.warns(UserWarning, match=r"convert left conformance\.test_ecosystem\._LSTMSubclass unconverted"):
        assert triton_lstm.convert(model, kernel="step") is model
    assert type(model.encoder) is triton_lstm.LSTM and model.again is model.encoder
    assert type(model.blocks[1]) is triton_lstm.LSTM and model.blocks[1].kernel == "step"
    assert type(model.custom) is _LSTMSubclass
    assert not model.encoder.training and model.blocks[1].training
    after = dict(model.named_parameters())
    assert list(after) == list(parameters)
    assert all(after[name] is parameters[name] for name in parameters)
    assert not model.blocks[1].weight_hr_l0.requires_grad
    assert_conforms("output", model(x), expected)


def test_convert_keeps_the_optimizer_and_its_state(device):
    """Adam's state is keyed by the Parameter objects: training goes on after conversion as if nothing happened."""

    def two_steps(convert_between):
        torch.manual_seed(0)
        model = nn.Sequential(nn.LSTM(IN, H, num_layers=2)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(1)
        for step in range(2):
            if step == 1 and convert_between:
                triton_lstm.convert(model)
                assert type(model[0]) is triton_lstm.LSTM
            x = torch.randn(T, B, IN, generator=generator).to(device)
            optimizer.zero_grad()
            model(x)[0].pow(2).mean().backward()
            optimizer.step()
        assert all(optimizer.state[p]["step"] == 2 for p in model.parameters())
        return list(model.parameters())

    assert_all_conform("parameters", two_steps(True), two_steps(False))


def test_convert_root_then_unconvert(device):
    torch.manual_seed(0)
    theirs = nn.LSTM(IN, H, num_layers=2, dropout=0.5, device=device).eval()
    parameters = list(theirs.parameters())
    ours = triton_lstm.convert(theirs)
    assert type(ours) is triton_lstm.LSTM and not ours.training and ours.dropout == 0.5
    assert all(a is b for a, b in zip(ours.parameters(), parameters, strict=True))
    back = triton_lstm.unconvert(ours)
    assert type(back) is nn.LSTM and all(a is b for a, b in zip(back.parameters(), parameters, strict=True))
    x = torch.randn(T, B, IN, device=device)
    assert_all_conform("outputs", (ours(x)[0], *ours(x)[1]), (back(x)[0], *back(x)[1]))


def test_convert_refuses_parametrized_weights():
    model = nn.Sequential(nn.LSTM(IN, H))
    parametrizations.weight_norm(model[0], "weight_hh_l0")
    with pytest.raises(ValueError, match="parametrized weights"):
        triton_lstm.convert(model)


# ---------------------------------------------------------------------------------------------------------------
# Distributed training and functional transforms


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@cpu_triton
def test_ddp_on_two_processes_matches_torch(tmp_path):
    """Two gloo processes train torch.nn.LSTM and then the converted triton_lstm.LSTM from the same weights; both
    end where one process training on the whole batch ends."""
    seed = 3
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(ddp_worker.run, args=(2, init_method, str(tmp_path), seed), nprocs=2, join=True)

    reference = ddp_worker.make_lstm(seed)
    optimizer = torch.optim.SGD(reference.parameters(), lr=ddp_worker.LR)
    for step in range(ddp_worker.STEPS):
        shards = [ddp_worker.shard(step, rank) for rank in range(2)]
        x, target = (torch.cat(parts, dim=1) for parts in zip(*shards, strict=True))
        ddp_worker.train_step(reference, optimizer, x, target)
    expected = reference.state_dict()
    for run in ("torch-0", "torch-1", "triton-0", "triton-1"):
        state = torch.load(tmp_path / f"{run}.pt")
        assert list(state) == list(expected)
        assert_all_conform(run, list(state.values()), list(expected.values()))


def test_functional_call_gradients_reach_the_given_tensors(device):
    ours, theirs = build_pair(IN, H, device=device, proj_size=P)
    torch.manual_seed(1)
    given = {name: torch.randn_like(p, requires_grad=True) for name, p in ours.named_parameters()}
    x = torch.randn(T, B, IN, device=device)
    got = torch.func.functional_call(ours, given, (x,))[0].sum()
    expected = torch.func.functional_call(theirs, given, (x,))[0].sum()
    assert_conforms("output sum", got, expected)
    assert_all_conform("grads", torch.autograd.grad(got, list(given.values())),
                       torch.autograd.grad(expected, list(given.values())))  # fmt: skip
    assert all(p.grad is None for p in ours.parameters())


def test_meta_construction_to_empty_reset_then_train(device):
    with torch.device("meta"):
        ours = triton_lstm.LSTM(IN, H, num_layers=2, bidirectional=True)
    ours.to_empty(device=device)
    torch.manual_seed(0)
    ours.reset_parameters()
    torch.manual_seed(0)
    theirs = nn.LSTM(IN, H, num_layers=2, bidirectional=True, device=device)
    x = torch.randn(T, B, IN, device=device, requires_grad=True)
    hx = random_hx(ours, B, device)
    got, got_grads = run_and_grad(ours, x, hx, [x, *hx, *ours.parameters()])
    expected, expected_grads = run_and_grad(theirs, x, hx, [x, *hx, *theirs.parameters()])
    assert_all_conform("outputs", got, expected)
    assert_all_conform("grads", got_grads, expected_grads)


# ---------------------------------------------------------------------------------------------------------------
# The example


def test_train_char_lm_example_runs():
    """The example trains with each implementation from the same weights and compares them."""
    sizes = ["--steps", "3", "--seq-len", "6", "--batch", "3", "--hidden", "8", "--embed", "4", "--sample", "5"]
    command = [sys.executable, str(REPO / "examples" / "train_char_lm.py"), "--impl", "both", "--layers", "1", *sizes]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    # One summary line per implementation, with or without tqdm's progress bar.
    assert re.search(r"^triton: loss \S+ -> \S+ in ", done.stdout, re.MULTILINE), done.stdout
    losses = re.search(r"^compare: torch final loss (\S+) .* triton final loss (\S+) ", done.stdout, re.MULTILINE)
    assert losses, done.stdout
    assert abs(float(losses[1]) - float(losses[2])) < 1e-3, done.stdout
