"""Differential fuzzing: whole configurations drawn by hypothesis, triton_lstm.LSTM against torch.nn.LSTM.

Each example draws a module configuration (layers, directions, batch_first, bias, projection, dropout, train or eval
mode, kernel, dtype), tiny sizes, a layout (dense, unbatched, or a PackedSequence from random lengths, sorted or not),
whether hx is given, an input scale and a seed for every tensor. The output, h_n, c_n and the gradients of the
input, h0, c0 and every parameter must conform to torch.nn.LSTM (``assert_conforms``: the per-dtype tolerances, the
three-way rule against a float64 reference for fp16/bf16), and the Triton kernels must have run (``TritonOnly``).
In training mode with dropout, both modules run with the same seed: on the CPU, both draw their dropout masks from
the global generator in the same order.

CI runs a small fixed budget, derandomized so that every run tries the same examples. A longer hunt, with fresh
random examples every run:

    TRITON_LSTM_FUZZ_EXAMPLES=500 python -m pytest conformance/test_fuzz.py -q --hypothesis-show-statistics

(``--hypothesis-seed=N`` repeats a run.) A failure prints the shrunk ``FuzzCase``; every failure found becomes a
permanent ``@example`` below, so that CI keeps checking it.
"""

import os
import warnings
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import triton_lstm
from conformance.helpers import (
    FLOAT64_REFERENCED,
    TritonOnly,
    assert_conforms,
    exact_float32_torch,
    float64_twin,
    forward_and_grads,
)
from triton_lstm import functional

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Every kernel the module can be asked for by name, read at run time so that new kernels are fuzzed too.
KERNEL_NAMES = tuple(name for name in functional.KERNELS if name != "auto")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

CI_EXAMPLES = 25
FUZZ_EXAMPLES = int(os.environ.get("TRITON_LSTM_FUZZ_EXAMPLES", "0"))


@dataclass(frozen=True)
class FuzzCase:
    """One drawn configuration; its repr is valid Python, ready to paste into an ``@example``."""

    kernel: str
    dtype: torch.dtype
    num_layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    proj_size: int
    hx: bool
    seq_len: int
    batch: int
    input_size: int
    hidden_size: int
    layout: str  # "dense", "unbatched" or "packed"
    lengths: tuple[int, ...] | None  # packed only: one length per batch row, in the caller's order
    enforce_sorted: bool
    training: bool
    dropout: float
    scale: float
    seed: int

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


@st.composite
def fuzz_cases(draw) -> FuzzCase:
    hidden_size = draw(st.integers(1, 9))
    proj_size = draw(st.integers(1, hidden_size - 1)) if hidden_size > 1 and draw(st.booleans()) else 0
    num_layers = draw(st.integers(1, 3))
    seq_len = draw(st.integers(1, 7))
    batch = draw(st.integers(1, 5))
    layout = draw(st.sampled_from(("dense", "packed", "unbatched")))
    lengths, enforce_sorted = None, False
    if layout == "packed":
        lengths = draw(st.lists(st.integers(1, seq_len), min_size=batch, max_size=batch))
        enforce_sorted = draw(st.booleans())
        lengths = tuple(sorted(lengths, reverse=True) if enforce_sorted else lengths)
    training = draw(st.booleans())
    dropout = draw(st.sampled_from((0.0, 0.3, 1.0)))
    if training and DEVICE.type != "cpu":
        # Only the CPU generator is shared with torch's LSTM: cuDNN draws its dropout masks its own way.
        dropout = 0.0
    return FuzzCase(
        kernel=draw(st.sampled_from(KERNEL_NAMES)),
        dtype=draw(st.sampled_from(DTYPES)),
        num_layers=num_layers,
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        proj_size=proj_size,
        hx=draw(st.booleans()),
        seq_len=seq_len,
        batch=batch,
        input_size=draw(st.integers(1, 9)),
        hidden_size=hidden_size,
        layout=layout,
        lengths=lengths,
        enforce_sorted=enforce_sorted,
        training=training,
        dropout=dropout,
        scale=draw(st.sampled_from((1.0, 0.1, 4.0))),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _modules(case: FuzzCase):
    """torch.nn.LSTM with weights drawn from the case's seed (torch's init distribution), and our copy of it."""
    generator = torch.Generator().manual_seed(case.seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="dropout option adds dropout")
        reference = torch.nn.LSTM(
            case.input_size,
            case.hidden_size,
            num_layers=case.num_layers,
            bias=case.bias,
            batch_first=case.batch_first,
            dropout=case.dropout,
            bidirectional=case.bidirectional,
            proj_size=case.proj_size,
            device="meta",
            dtype=case.dtype,
        ).to_empty(device=DEVICE)
    bound = case.hidden_size**-0.5
    with torch.no_grad():
        for weight in reference.parameters():
            weight.copy_(torch.empty(weight.shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator))
    reference.train(case.training)
    return reference, triton_lstm.LSTM.from_torch(reference, kernel=case.kernel)


def _inputs(case: FuzzCase):
    """Input (padded when packed), hx or None, and the upstream gradients of output, h_n and c_n."""
    generator = torch.Generator().manual_seed(case.seed + 1)

    def randn(*shape, scale=1.0):
        values = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
        return values.to(device=DEVICE, dtype=case.dtype)

    h_out = case.proj_size or case.hidden_size
    rows = case.num_layers * case.directions
    width = case.directions * h_out
    if case.layout == "unbatched":
        x = randn(case.seq_len, case.input_size, scale=case.scale)
        state_shapes = [(rows, h_out), (rows, case.hidden_size)]
        output_shape = (case.seq_len, width)
    else:
        x_shape = (case.batch, case.seq_len) if case.batch_first else (case.seq_len, case.batch)
        x = randn(*x_shape, case.input_size, scale=case.scale)
        state_shapes = [(rows, case.batch, h_out), (rows, case.batch, case.hidden_size)]
        output_shape = (sum(case.lengths), width) if case.layout == "packed" else (*x_shape, width)
    hx = tuple(randn(*shape, scale=case.scale) for shape in state_shapes) if case.hx else None
    upstream = (randn(*output_shape), randn(*state_shapes[0]), randn(*state_shapes[1]))
    return x, hx, upstream


def _run(module, case: FuzzCase, x, hx, upstream):
    lengths = torch.tensor(case.lengths) if case.layout == "packed" else None
    return forward_and_grads(
        module, x, hx, upstream, lengths=lengths, enforce_sorted=case.enforce_sorted, seed=case.seed
    )


# Failing examples found by fuzzing, each a permanent regression case (none so far, in 1,100 examples), then
# corners of the space that every run covers whatever hypothesis draws: the smallest configuration, and the
# largest sizes with every option on, packed, unsorted, in training with dropout (the CPU shares torch's dropout).
REGRESSIONS: list[FuzzCase] = []
CORNERS = [
    FuzzCase(kernel="step", dtype=torch.float32, num_layers=1, bidirectional=False, batch_first=False, bias=True,
             proj_size=0, hx=False, seq_len=1, batch=1, input_size=1, hidden_size=1, layout="dense", lengths=None,
             enforce_sorted=False, training=False, dropout=0.0, scale=1.0, seed=0),
    FuzzCase(kernel="step", dtype=torch.bfloat16, num_layers=3, bidirectional=True, batch_first=True, bias=False,
             proj_size=8, hx=True, seq_len=7, batch=5, input_size=9, hidden_size=9, layout="packed",
             lengths=(7, 1, 4, 7, 2), enforce_sorted=False, training=True,
             dropout=0.3 if DEVICE.type == "cpu" else 0.0, scale=4.0, seed=12345),
]  # fmt: skip


def _with_examples(test):
    """Run every regression case and corner, with each kernel, before the drawn examples."""
    for case in [*REGRESSIONS, *CORNERS]:
        for kernel in KERNEL_NAMES:
            test = example(case=replace(case, kernel=kernel))(test)
    return test


def _settings():
    common = {
        "deadline": None,
        "database": None,
        "print_blob": True,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    if FUZZ_EXAMPLES:
        return settings(max_examples=FUZZ_EXAMPLES, **common)
    return settings(max_examples=CI_EXAMPLES, derandomize=True, **common)


@_settings()
@_with_examples
@given(case=fuzz_cases())
def test_fuzz_matches_torch(case: FuzzCase):
    reference, ours = _modules(case)
    x, hx, upstream = _inputs(case)

    # cuDNN refuses backward in eval mode; torch's native CUDA kernels compute the same function and allow it.
    cudnn = DEVICE.type != "cuda" or case.training
    with torch.backends.cudnn.flags(enabled=cudnn), exact_float32_torch():
        theirs = _run(reference, case, x, hx, upstream)
        ref64 = None
        if case.dtype in FLOAT64_REFERENCED:
            hx64 = tuple(t.double() for t in hx) if hx is not None else None
            ref64 = _run(float64_twin(reference), case, x.double(), hx64, upstream)
    with pytest.MonkeyPatch.context() as patch, TritonOnly(patch)() as launches:
        result = _run(ours, case, x, hx, upstream)
    assert launches.by_kernel[f"{case.kernel}_forward_kernel"] > 0
    assert launches.by_kernel[f"{case.kernel}_backward_kernel"] > 0

    if case.layout == "packed":
        batch_sizes, sorted_indices, unsorted_indices = result.packing
        assert torch.equal(batch_sizes, theirs.packing[0])
        for ours_index, their_index in zip((sorted_indices, unsorted_indices), theirs.packing[1:], strict=True):
            assert (ours_index is None) == (their_index is None)
            assert ours_index is None or torch.equal(ours_index, their_index)
    for name, value in result.outputs.items():
        assert_conforms(name, value, theirs.outputs[name], ref64.outputs[name] if ref64 is not None else None)
    assert result.grads.keys() == theirs.grads.keys()
    for name, value in result.grads.items():
        assert_conforms(f"grad {name}", value, theirs.grads[name], ref64.grads[name] if ref64 is not None else None)
