"""Reliability: non-finite values, saturation, long sequences and memory, determinism, odd layouts, threads.

Every comparison is with torch.nn.LSTM on the same values, under the per-dtype tolerances of ``helpers``; every test
proves that the Triton kernels ran (``triton_only``).

- Non-finite values: NaN and +-inf in the input, h0 or c0 give non-finite results exactly where torch's are (the
  same positions, NaN for NaN, inf for inf), forward and backward, dense and packed; the finite rest conforms.
- Large magnitudes: values up to 1e4 in the input, h0 or c0 saturate the gates as torch does, in every dtype, with
  no NaN from exp overflowing inside sigmoid or tanh.
- Long sequences: at T = 2,000 (T = 10,000 with ``TRITON_LSTM_SLOW=1``, a few minutes under the interpreter),
  float32 forward, the error against a float64 reference stays within 4x torch's own float32 error (+ 1e-7).
  Memory: what backward keeps is affine in T, at most twice the per-step state an LSTM's backward needs; without
  a gradient only x @ W_ih^T and h grow with T (two cell-state slots, no gates), and no Python object is kept
  per step.
- Determinism: repeated forward and backward calls give bitwise-identical outputs and gradients.
- Odd layouts: non-contiguous, transposed and expanded (stride-0) input and hx, h0 and c0 the same tensor, hx that
  views the input, packed data that is not contiguous; weights changed in place between calls are seen by the next
  call (no stale copies), through no_grad edits, an optimizer step, ``.data`` and ``load_state_dict``; changed
  between forward and backward, backward raises as torch's does.
- Threads: two threads running different LSTM shapes at once get torch's results.
"""

import contextlib
import gc
import os
import sys
import threading

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import triton_lstm
from conformance.helpers import (
    FLOAT64_REFERENCED,
    assert_conforms,
    assert_error_within,
    assert_nonfinite_conforms,
    float64_twin,
    forward_and_grads,
)
from triton_lstm import functional, launch

KERNEL_NAMES = tuple(name for name in functional.KERNELS if name != "auto")
DTYPE_NAMES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES = tuple(DTYPE_NAMES)

# The interpreter's numpy warns when exp overflows to inf inside sigmoid; that inf is the intended saturation.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def _modules(kwargs, dtype, device, kernel, seed=0):
    """A torch.nn.LSTM (weights from ``seed``) and a triton_lstm.LSTM with its weights."""
    torch.manual_seed(seed)
    reference = torch.nn.LSTM(**kwargs, device=device, dtype=dtype)
    return reference, triton_lstm.LSTM.from_torch(reference, kernel=kernel)


def _random(generator, device, dtype):
    """randn(*shape, scale=1.0): fresh normal values drawn in float64, then cast."""

    def randn(*shape, scale=1.0):
        values = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
        return values.to(device=device, dtype=dtype)

    return randn


def _reference64(reference, x, hx, upstream, **kwargs):
    """torch.nn.LSTM in float64 on the same values: the reference of the three-way rule for fp16/bf16."""
    hx64 = tuple(t.double() for t in hx) if hx is not None else None
    return forward_and_grads(float64_twin(reference), x.double(), hx64, upstream, **kwargs)


def _assert_ran(launches, kernel, backward=True):
    assert launches.by_kernel[f"{kernel}_forward_kernel"] > 0
    if backward:
        assert launches.by_kernel[f"{kernel}_backward_kernel"] > 0


def _assert_run_conforms(result, theirs, ref64=None, compare=assert_conforms):
    for name, value in result.outputs.items():
        compare(name, value, theirs.outputs[name], ref64.outputs[name] if ref64 is not None else None)
    assert result.grads.keys() == theirs.grads.keys()
    for name, value in result.grads.items():
        compare(f"grad {name}", value, theirs.grads[name], ref64.grads[name] if ref64 is not None else None)


# ---------------------------------------------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------------------------------------------

NONFINITE = {"nan": float("nan"), "inf": float("inf"), "neginf": float("-inf")}
NONFINITE_MODULE = {"input_size": 3, "hidden_size": 4, "num_layers": 2, "bidirectional": True}
NONFINITE_T, NONFINITE_B = 4, 3
# Packed: row 1, where the non-finite value goes, ends before the others, so later steps run past its end.
NONFINITE_LENGTHS = (4, 2, 3)


def _nonfinite_cases():
    cases = []
    for kernel in KERNEL_NAMES:
        for dtype in DTYPES:
            values = ("nan", "inf", "neginf") if dtype == torch.float32 else ("nan", "inf")
            for value in values:
                for where in ("input", "h0", "c0"):
                    for layout in ("dense", "packed"):
                        case_id = f"{kernel}-{DTYPE_NAMES[dtype]}-{value}-in-{where}-{layout}"
                        cases.append(pytest.param(kernel, dtype, value, where, layout, id=case_id))
    return cases


@pytest.mark.parametrize(("kernel", "dtype", "value", "where", "layout"), _nonfinite_cases())
def test_nonfinite_values_propagate_like_torch(kernel, dtype, value, where, layout, device, triton_only):
    reference, ours = _modules(NONFINITE_MODULE, dtype, device, kernel)
    randn = _random(torch.Generator().manual_seed(11), device, dtype)
    rows, hidden = 2 * NONFINITE_MODULE["num_layers"], NONFINITE_MODULE["hidden_size"]
    x = randn(NONFINITE_T, NONFINITE_B, NONFINITE_MODULE["input_size"])
    hx = (randn(rows, NONFINITE_B, hidden), randn(rows, NONFINITE_B, hidden))
    # Time step 0 (or the first layer's forward direction) of batch row 1, feature or hidden unit 1.
    {"input": x, "h0": hx[0], "c0": hx[1]}[where][0, 1, 1] = NONFINITE[value]
    packed = layout == "packed"
    output_rows = (sum(NONFINITE_LENGTHS),) if packed else (NONFINITE_T, NONFINITE_B)
    upstream = (randn(*output_rows, 2 * hidden), randn(rows, NONFINITE_B, hidden), randn(rows, NONFINITE_B, hidden))
    kwargs = {"lengths": torch.tensor(NONFINITE_LENGTHS), "enforce_sorted": False} if packed else {}

    theirs = forward_and_grads(reference, x, hx, upstream, **kwargs)
    ref64 = _reference64(reference, x, hx, upstream, **kwargs) if dtype in FLOAT64_REFERENCED else None
    with triton_only() as launches:
        result = forward_and_grads(ours, x, hx, upstream, **kwargs)
    _assert_ran(launches, kernel)

    every = [*theirs.outputs.values(), *theirs.grads.values()]
    assert any(not torch.isfinite(t).all() for t in every), "the case should give torch non-finite values"
    _assert_run_conforms(result, theirs, ref64, compare=assert_nonfinite_conforms)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_packed_infinite_c0_in_a_short_row_leaves_gradients_finite_like_torch(kernel, device, triton_only):
    """The smallest case of the packed infinite-c0 bug: one layer, lengths (3, 1), c0[0, 1, 0] = inf. torch's
    c0 gradient is finite; the gradient of w_ih is -+inf in the forget-gate row of that unit only."""
    reference, ours = _modules({"input_size": 2, "hidden_size": 2}, torch.float32, device, kernel)
    randn = _random(torch.Generator().manual_seed(12), device, torch.float32)
    x, hx = randn(3, 2, 2), (randn(1, 2, 2), randn(1, 2, 2))
    hx[1][0, 1, 0] = float("inf")
    upstream = (randn(4, 2), randn(1, 2, 2), randn(1, 2, 2))
    kwargs = {"lengths": torch.tensor([3, 1])}
    theirs = forward_and_grads(reference, x, hx, upstream, **kwargs)
    with triton_only() as launches:
        result = forward_and_grads(ours, x, hx, upstream, **kwargs)
    _assert_ran(launches, kernel)
    assert torch.isfinite(theirs.grads["c0"]).all() and not torch.isfinite(theirs.grads["weight_ih_l0"]).all()
    _assert_run_conforms(result, theirs, compare=assert_nonfinite_conforms)


# ---------------------------------------------------------------------------------------------------------------
# Large magnitudes
# ---------------------------------------------------------------------------------------------------------------

LARGE = 1e4
LARGE_MODULE = {"input_size": 3, "hidden_size": 5, "proj_size": 3, "bidirectional": True}


@pytest.mark.parametrize("large", ["input", "h0", "c0", "all"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_large_magnitudes_saturate_like_torch(kernel, dtype, large, device, triton_only):
    """Values uniform in (-1e4, 1e4) drive gate pre-activations far past where exp(-x) overflows (x < -88 in
    float32, x < -709 in float64): sigmoid must give exactly 0 or 1 there and tanh +-1, never NaN."""
    reference, ours = _modules(LARGE_MODULE, dtype, device, kernel, seed=1)
    generator = torch.Generator().manual_seed(5)

    def values(name, *shape):
        if large in (name, "all"):
            uniform = torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1
            return (uniform * LARGE).to(device=device, dtype=dtype)
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    seq_len, batch, rows = 5, 3, 2
    x = values("input", seq_len, batch, LARGE_MODULE["input_size"])
    hx = (values("h0", rows, batch, LARGE_MODULE["proj_size"]), values("c0", rows, batch, LARGE_MODULE["hidden_size"]))
    randn = _random(generator, device, dtype)
    upstream = (randn(seq_len, batch, 2 * LARGE_MODULE["proj_size"]), randn(*hx[0].shape), randn(*hx[1].shape))

    theirs = forward_and_grads(reference, x, hx, upstream)
    ref64 = _reference64(reference, x, hx, upstream) if dtype in FLOAT64_REFERENCED else None
    with triton_only() as launches:
        result = forward_and_grads(ours, x, hx, upstream)
    _assert_ran(launches, kernel)

    for name, value in [*result.outputs.items(), *result.grads.items()]:
        assert torch.isfinite(value).all(), f"{name}: non-finite values from finite inputs"
    _assert_run_conforms(result, theirs, ref64)


# ---------------------------------------------------------------------------------------------------------------
# Long sequences and memory
# ---------------------------------------------------------------------------------------------------------------

SLOW = bool(os.environ.get("TRITON_LSTM_SLOW"))
LONG_MODULE = {"input_size": 3, "hidden_size": 4}


@pytest.mark.parametrize(
    "seq_len",
    [
        2_000,
        pytest.param(
            10_000,
            marks=pytest.mark.skipif(not SLOW, reason="minutes under the interpreter: set TRITON_LSTM_SLOW=1"),
        ),
    ],
    ids=lambda t: f"T{t}",
)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_long_sequence_error_stays_near_torchs(kernel, seq_len, device, triton_only):
    """float32, one layer, one direction, B=1, H=4, forward only (the interpreter runs about 20 ms per step)."""
    reference, ours = _modules(LONG_MODULE, torch.float32, device, kernel, seed=2)
    randn = _random(torch.Generator().manual_seed(2), device, torch.float32)
    x = randn(seq_len, 1, LONG_MODULE["input_size"])
    hx = (randn(1, 1, LONG_MODULE["hidden_size"]), randn(1, 1, LONG_MODULE["hidden_size"]))
    with torch.no_grad():
        output, (h_n, c_n) = reference(x, hx)
        ref64, (h64, c64) = float64_twin(reference)(x.double(), tuple(t.double() for t in hx))
        with triton_only() as launches:
            ours_output, (ours_h, ours_c) = ours(x, hx)
    _assert_ran(launches, kernel, backward=False)
    for name, value, theirs, exact in (
        ("output", ours_output, output, ref64),
        ("h_n", ours_h, h_n, h64),
        ("c_n", ours_c, c_n, c64),
    ):
        assert_error_within(name, value, theirs, exact, factor=4, atol=1e-7)


MEMORY_MODULE = {"input_size": 3, "hidden_size": 5, "num_layers": 2, "bidirectional": True, "proj_size": 2}
MEMORY_BATCH = 3
MEMORY_STEPS = (3, 6, 9)


def _saved_bytes(module, seq_len, device) -> int:
    """Bytes of the distinct storages that autograd keeps for backward after one forward at ``seq_len``."""
    randn = _random(torch.Generator().manual_seed(seq_len), device, torch.float32)
    x = randn(seq_len, MEMORY_BATCH, MEMORY_MODULE["input_size"]).requires_grad_()
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output, _ = module(x)
    del output
    return sum(storages.values())


def _per_step_state_bytes() -> int:
    """What an LSTM's backward needs per time step at least, in float32: each layer's input, and per direction h
    (H_out), the four gates and c (H)."""
    hidden, h_out = MEMORY_MODULE["hidden_size"], MEMORY_MODULE["proj_size"]
    layer_inputs = MEMORY_MODULE["input_size"] + 2 * h_out
    per_direction = h_out + 5 * hidden
    return 4 * MEMORY_BATCH * (layer_inputs + MEMORY_MODULE["num_layers"] * 2 * per_direction)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_memory_saved_for_backward_is_linear_in_seq_len(kernel, device, triton_only):
    _, ours = _modules(MEMORY_MODULE, torch.float32, device, kernel)
    with triton_only() as launches:
        saved = [_saved_bytes(ours, seq_len, device) for seq_len in MEMORY_STEPS]
    _assert_ran(launches, kernel, backward=False)
    step = MEMORY_STEPS[1] - MEMORY_STEPS[0]
    assert saved[2] - saved[1] == saved[1] - saved[0], f"saved bytes {saved} at T={MEMORY_STEPS} are not affine"
    per_step = (saved[1] - saved[0]) / step
    assert 0 < per_step <= 2 * _per_step_state_bytes(), f"{per_step} bytes a step, {_per_step_state_bytes()} needed"


def _objects_left(module, x) -> int:
    """Python objects that one no-grad call leaves alive (its result is dropped)."""
    gc.collect()
    before = len(gc.get_objects())
    with torch.no_grad():
        module(x)
    gc.collect()
    return len(gc.get_objects()) - before


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_inference_memory_is_linear_in_seq_len_and_keeps_no_objects_per_step(kernel, device, triton_only, monkeypatch):
    """Without a gradient, the launcher's buffers per step are x @ W_ih^T and h only: the cell state keeps two
    slots and no gates are stored, whatever T; and a call leaves no Python object behind per step."""
    _, ours = _modules(MEMORY_MODULE, torch.float32, device, kernel)
    randn = _random(torch.Generator().manual_seed(3), device, torch.float32)
    inputs = {seq_len: randn(seq_len, MEMORY_BATCH, MEMORY_MODULE["input_size"]) for seq_len in MEMORY_STEPS}
    buffer_bytes = []
    prepare_forward = launch.prepare_forward

    def recording(*args, **kwargs):
        buffers = prepare_forward(*args, **kwargs)
        sizes = {name: getattr(buffers, name).untyped_storage().nbytes() for name in ("x_proj", "hs", "cs", "gates")}
        buffer_bytes[-1].append(sizes)
        return buffers

    monkeypatch.setattr(launch, "prepare_forward", recording)
    with triton_only() as launches:
        buffer_bytes.append([])
        _objects_left(ours, inputs[MEMORY_STEPS[0]])  # warm-up: caches a first call fills are not per-step growth
        live_objects = []
        for seq_len in MEMORY_STEPS:
            buffer_bytes.append([])
            live_objects.append(_objects_left(ours, inputs[seq_len]))
    _assert_ran(launches, kernel, backward=False)

    def total(call, *names):
        return sum(layer[name] for layer in buffer_bytes[1 + call] for name in names)

    assert len(buffer_bytes[1]) == MEMORY_MODULE["num_layers"]
    assert total(0, "cs", "gates") == total(1, "cs", "gates") == total(2, "cs", "gates"), buffer_bytes
    growing = [total(call, "x_proj", "hs") for call in range(3)]
    assert growing[2] - growing[1] == growing[1] - growing[0], f"x_proj + hs bytes {growing} are not affine in T"
    step = MEMORY_STEPS[1] - MEMORY_STEPS[0]
    per_step = 4 * MEMORY_BATCH * 2 * (4 * MEMORY_MODULE["hidden_size"] + MEMORY_MODULE["proj_size"])  # one layer
    assert (growing[1] - growing[0]) / step <= MEMORY_MODULE["num_layers"] * per_step
    # Fewer objects after a call is fine (a cache released something); what must not happen is growth with T.
    assert max(live_objects) < step, f"objects left after each call: {live_objects}"


# ---------------------------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------------------------


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bit patterns, so that comparing them tells -0.0 from 0.0 and compares NaNs."""
    as_int = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.detach().contiguous().view(as_int)


@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_repeated_calls_are_bitwise_identical(kernel, dtype, layout, device, triton_only):
    module = {"input_size": 3, "hidden_size": 5, "bidirectional": True, "proj_size": 3}
    _, ours = _modules(module, dtype, device, kernel)
    randn = _random(torch.Generator().manual_seed(4), device, dtype)
    seq_len, batch, lengths = 5, 4, (3, 5, 1, 4)
    x = randn(seq_len, batch, module["input_size"])
    hx = (randn(2, batch, 3), randn(2, batch, 5))
    output_rows = (sum(lengths),) if layout == "packed" else (seq_len, batch)
    upstream = (randn(*output_rows, 6), randn(2, batch, 3), randn(2, batch, 5))
    kwargs = {"lengths": torch.tensor(lengths), "enforce_sorted": False} if layout == "packed" else {}
    with triton_only() as launches:
        runs = [forward_and_grads(ours, x, hx, upstream, **kwargs) for _ in range(3)]
    _assert_ran(launches, kernel)
    first = runs[0]
    for run in runs[1:]:
        for name, value in [*run.outputs.items(), *run.grads.items()]:
            expected = first.outputs[name] if name in first.outputs else first.grads[name]
            assert torch.equal(_bits(value), _bits(expected)), f"{name} changed between identical calls"


# ---------------------------------------------------------------------------------------------------------------
# Odd layouts
# ---------------------------------------------------------------------------------------------------------------

# input_size == hidden_size and no projection, so that h0 and c0 can be one tensor and hx can view the input.
LAYOUT_MODULE = {"input_size": 4, "hidden_size": 4, "num_layers": 2, "bidirectional": True}
T, B, SIZE, ROWS = 6, 3, 4, 4


def _layout_cases():
    """name -> (batch_first, leaf shapes, build(leaves) -> (input, hx)). Gradients are taken at the leaves."""
    return {
        "noncontiguous-input": (False, [(T, B, 2 * SIZE)], lambda x: (x[..., ::2], None)),
        "transposed-input-seq-first": (False, [(B, T, SIZE)], lambda x: (x.transpose(0, 1), None)),
        "transposed-input-batch-first": (True, [(T, B, SIZE)], lambda x: (x.transpose(0, 1), None)),
        "noncontiguous-hx": (
            False,
            [(T, B, SIZE), (ROWS, B, 2 * SIZE), (B, ROWS, SIZE)],
            lambda x, h, c: (x, (h[..., 1::2], c.transpose(0, 1))),
        ),
        "expanded-input-over-batch": (False, [(T, 1, SIZE)], lambda x: (x.expand(T, B, SIZE), None)),
        "expanded-input-over-time": (False, [(1, B, SIZE)], lambda x: (x.expand(T, B, SIZE), None)),
        "expanded-hx": (
            False,
            [(T, B, SIZE), (1, 1, SIZE), (ROWS, 1, SIZE)],
            lambda x, h, c: (x, (h.expand(ROWS, B, SIZE), c.expand(ROWS, B, SIZE))),
        ),
        "h0-and-c0-one-tensor": (False, [(T, B, SIZE), (ROWS, B, SIZE)], lambda x, s: (x, (s, s))),
        "hx-views-of-input": (False, [(T, B, SIZE)], lambda x: (x, (x[:ROWS], x[1 : ROWS + 1]))),
        "packed-noncontiguous-data": (
            False,
            [(9, 2 * SIZE)],
            lambda data: (PackedSequence(data[:, 1::2], torch.tensor([3, 3, 2, 1])), None),
        ),
    }


def _run_from_leaves(module, leaves, build, upstream_seed):
    """Forward from inputs built out of fresh leaf copies, backward with random upstream gradients; returns
    outputs and the gradients of the leaves and parameters, by name."""
    leaves = [leaf.detach().clone().requires_grad_() for leaf in leaves]
    inputs, hx = build(*leaves)
    output, (h_n, c_n) = module(inputs, hx)
    if isinstance(output, PackedSequence):
        output = output.data
    outputs = {"output": output, "h_n": h_n, "c_n": c_n}
    randn = _random(torch.Generator().manual_seed(upstream_seed), output.device, output.dtype)
    loss = sum((value * randn(*value.shape)).sum() for value in outputs.values())
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, [*leaves, *params.values()])
    names = [f"leaf{i}" for i in range(len(leaves))] + list(params)
    return outputs, dict(zip(names, grads, strict=True))


def _contiguous_hx(build):
    """``build`` with contiguous copies of h0 and c0, for torch's LSTM: on CUDA, cuDNN rejects a non-contiguous hx
    ("rnn: hx is not contiguous") where torch's CPU LSTM, and ours everywhere, accept it."""

    def contiguous(*leaves):
        inputs, hx = build(*leaves)
        return inputs, tuple(t.contiguous() for t in hx) if hx is not None else None

    return contiguous


@pytest.mark.parametrize("case", list(_layout_cases()))
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_odd_layouts_match_torch(kernel, case, device, triton_only):
    batch_first, shapes, build = _layout_cases()[case]
    reference, ours = _modules({**LAYOUT_MODULE, "batch_first": batch_first}, torch.float32, device, kernel)
    randn = _random(torch.Generator().manual_seed(6), device, torch.float32)
    leaves = [randn(*shape) for shape in shapes]
    theirs_out, theirs_grads = _run_from_leaves(reference, leaves, _contiguous_hx(build), upstream_seed=7)
    ref64_out, ref64_grads = _run_from_leaves(
        float64_twin(reference), [leaf.double() for leaf in leaves], _contiguous_hx(build), upstream_seed=7
    )
    with triton_only() as launches:
        ours_out, ours_grads = _run_from_leaves(ours, leaves, build, upstream_seed=7)
    _assert_ran(launches, kernel)
    for name, value in ours_out.items():
        assert_conforms(name, value, theirs_out[name], ref64_out[name])
    for name, value in ours_grads.items():
        assert_conforms(f"grad {name}", value, theirs_grads[name], ref64_grads[name])


def _change_in_place(step, reference, ours, generator, grads):
    """Apply the same in-place change to both modules' weights (each is a way users change weights)."""
    pairs = list(zip(reference.parameters(), ours.parameters(), strict=True))
    if step == "no-grad-edit":
        with torch.no_grad():
            for theirs, mine in pairs:
                delta = torch.randn(theirs.shape, generator=generator, dtype=theirs.dtype).to(theirs.device) * 0.3
                theirs.add_(delta)
                mine.add_(delta)
    elif step == "optimizer-step":
        for module in (reference, ours):
            optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
            for name, weight in module.named_parameters():
                weight.grad = grads[name].clone()
            optimizer.step()
    elif step == "data-copy":
        for theirs, mine in pairs:
            value = torch.randn(theirs.shape, generator=generator, dtype=theirs.dtype).to(theirs.device) * 0.5
            theirs.data.copy_(value)
            mine.data.copy_(value)
    elif step == "load-state-dict":
        state = {
            name: torch.randn(value.shape, generator=generator, dtype=value.dtype).to(value.device) * 0.5
            for name, value in reference.state_dict().items()
        }
        reference.load_state_dict(state)
        ours.load_state_dict(state)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_in_place_weight_changes_are_seen_by_the_next_call(kernel, device, triton_only):
    module = {"input_size": 3, "hidden_size": 5, "bidirectional": True, "proj_size": 2}  # every kind of weight
    reference, ours = _modules(module, torch.float32, device, kernel)
    generator = torch.Generator().manual_seed(8)
    randn = _random(generator, device, torch.float32)
    x, hx = randn(4, 2, 3), (randn(2, 2, 2), randn(2, 2, 5))
    upstream = (randn(4, 2, 4), randn(2, 2, 2), randn(2, 2, 5))
    theirs = forward_and_grads(reference, x, hx, upstream)
    previous = None
    for step in ("first-call", "no-grad-edit", "optimizer-step", "data-copy", "load-state-dict"):
        _change_in_place(step, reference, ours, generator, theirs.grads)
        theirs = forward_and_grads(reference, x, hx, upstream)
        with triton_only() as launches:
            result = forward_and_grads(ours, x, hx, upstream)
            with torch.no_grad():
                inference = ours(x, hx)[0]
        _assert_ran(launches, kernel)
        _assert_run_conforms(result, theirs)
        assert_conforms(f"{step}: no-grad output", inference, theirs.outputs["output"].detach())
        if previous is not None:
            assert not torch.equal(result.outputs["output"], previous), f"{step}: output did not change"
        previous = result.outputs["output"]


IN_PLACE_CASES = [
    (False, "weight_ih_l0"),
    (False, "weight_hh_l0"),
    (False, "weight_hr_l0"),
    (True, "weight_ih_l0"),
    (True, "weight_hh_l0"),
    (True, "weight_hr_l0"),
    (True, "weight_ih_l0_reverse"),
    (True, "weight_hh_l0_reverse"),
]


@pytest.mark.parametrize(
    ("bidirectional", "weight"), IN_PLACE_CASES, ids=[f"{'bi' if bi else 'uni'}-{name}" for bi, name in IN_PLACE_CASES]
)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_weight_changed_in_place_between_forward_and_backward_raises_like_torch(
    kernel, bidirectional, weight, device, triton_only
):
    config = {"input_size": 3, "hidden_size": 4, "bidirectional": bidirectional, "proj_size": 2}
    reference, ours = _modules(config, torch.float32, device, kernel)
    randn = _random(torch.Generator().manual_seed(9), device, torch.float32)
    x = randn(5, 2, 3).requires_grad_()
    message = "modified by an inplace operation"
    output = reference(x)[0]
    with torch.no_grad():
        getattr(reference, weight).mul_(0.5)
    with pytest.raises(RuntimeError, match=message):
        output.sum().backward()
    with triton_only():
        output = ours(x)[0]
        with torch.no_grad():
            getattr(ours, weight).mul_(0.5)
        with pytest.raises(RuntimeError, match=message):
            output.sum().backward()


FROZEN_CASES = [
    ({"bidirectional": True}, "weight_hh_l0"),
    ({"bidirectional": True}, "weight_ih_l0_reverse"),
    ({"bidirectional": True}, "weight_hr_l0"),
    ({"num_layers": 3}, "weight_hh_l1"),  # one direction: the persistent kernel stacks the layers' matrices
    ({"num_layers": 3}, "weight_ih_l2"),
]


@pytest.mark.parametrize(("layout", "weight"), FROZEN_CASES, ids=[f"{next(iter(k))}-{w}" for k, w in FROZEN_CASES])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_frozen_weight_changed_in_place_between_forward_and_backward_raises_like_torch(
    kernel, layout, weight, device, triton_only
):
    """Every weight frozen (requires_grad=False), the input trainable: torch keeps the weights for the input's
    gradient and raises when one changed in place; so do we, where weights are stacked from several tensors."""
    config = {"input_size": 3, "hidden_size": 4, "proj_size": 2, **layout}
    reference, ours = _modules(config, torch.float32, device, kernel)
    for module in (reference, ours):
        module.requires_grad_(False)
    randn = _random(torch.Generator().manual_seed(9), device, torch.float32)
    x = randn(5, 2, 3).requires_grad_()
    message = "modified by an inplace operation"
    for module, only in ((reference, contextlib.nullcontext), (ours, triton_only)):
        with only():
            output = module(x)[0]
            with torch.no_grad():
                getattr(module, weight).mul_(0.5)
            with pytest.raises(RuntimeError, match=message):
                output.sum().backward()


# ---------------------------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_two_threads_with_different_shapes_get_torchs_results(kernel, device, triton_only):
    jobs = []
    configs = [
        ({"input_size": 3, "hidden_size": 5}, torch.float32, None),
        ({"input_size": 4, "hidden_size": 6, "num_layers": 2, "bidirectional": True, "proj_size": 2}, torch.float64,
         (2, 5, 3, 5)),
    ]  # fmt: skip
    for index, (module, dtype, lengths) in enumerate(configs):
        reference, ours = _modules(module, dtype, device, kernel, seed=index)
        randn = _random(torch.Generator().manual_seed(10 + index), device, dtype)
        rows, h_out = module.get("num_layers", 1) * (2 if module.get("bidirectional") else 1), module.get("proj_size")
        batch, width = 4, (h_out or module["hidden_size"]) * (2 if module.get("bidirectional") else 1)
        x = randn(5, batch, module["input_size"])
        hx = (randn(rows, batch, h_out or module["hidden_size"]), randn(rows, batch, module["hidden_size"]))
        output_rows = (sum(lengths),) if lengths else (5, batch)
        upstream = (randn(*output_rows, width), randn(*hx[0].shape), randn(*hx[1].shape))
        kwargs = {"lengths": torch.tensor(lengths), "enforce_sorted": False} if lengths else {}
        jobs.append((ours, x, hx, upstream, kwargs, forward_and_grads(reference, x, hx, upstream, **kwargs)))

    barrier = threading.Barrier(len(jobs), timeout=60)
    failures = []

    def work(ours, x, hx, upstream, kwargs, theirs):
        try:
            barrier.wait()
            for _ in range(3):
                _assert_run_conforms(forward_and_grads(ours, x, hx, upstream, **kwargs), theirs)
        except Exception as error:  # reported by the main thread
            failures.append(error)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads finely, so that their launches overlap
    try:
        with triton_only() as launches:
            threads = [threading.Thread(target=work, args=job, daemon=True) for job in jobs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=300)
    finally:
        sys.setswitchinterval(switch_interval)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    assert not failures, f"{len(failures)} thread(s) failed, first: {failures[0]!r}"
    _assert_ran(launches, kernel)
