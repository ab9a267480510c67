"""PackedSequence input against torch.nn.LSTM on the same PackedSequence: outputs, h_n, c_n, every gradient."""

import re
import zlib
from dataclasses import dataclass

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

import triton_lstm
from conformance.helpers import FLOAT64_REFERENCED, assert_conforms, float64_twin
from conformance.matrix import DTYPE_NAMES, DTYPES

INPUT_SIZE, HIDDEN = 4, 6


@dataclass(frozen=True)
class PackedCase:
    lengths: tuple[int, ...]
    enforce_sorted: bool = False
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    bias: bool = True
    hx: bool = True
    dtype: torch.dtype = torch.float32

    @property
    def id(self) -> str:
        return "-".join(
            [
                "len" + "_".join(map(str, self.lengths)),
                "sorted" if self.enforce_sorted else "unsorted",
                f"L{self.num_layers}",
                "bi" if self.bidirectional else "uni",
                f"proj{self.proj_size}",
                "bias" if self.bias else "nobias",
                "hx" if self.hx else "nohx",
                DTYPE_NAMES[self.dtype],
            ]
        )


# Lengths: unsorted with 1 and the maximum, sorted, all equal, a batch of one.
_MODES = [
    PackedCase(lengths=(5, 3, 7, 1), num_layers=2, bidirectional=True),
    PackedCase(lengths=(7, 5, 3, 1), enforce_sorted=True, proj_size=3, hx=False),
    PackedCase(lengths=(4, 4, 4), bidirectional=True, proj_size=2, bias=False),
    PackedCase(lengths=(6,), num_layers=3, bidirectional=True),
    PackedCase(lengths=(2, 6, 1, 6, 3), num_layers=2, proj_size=4, hx=False, bias=False),
]
CASES = [PackedCase(**{**case.__dict__, "dtype": dtype}) for case in _MODES for dtype in DTYPES]


def _module(case, device):
    torch.manual_seed(0)
    reference = torch.nn.LSTM(INPUT_SIZE, HIDDEN, num_layers=case.num_layers, bias=case.bias,
                              bidirectional=case.bidirectional, proj_size=case.proj_size, device=device,
                              dtype=case.dtype)  # fmt: skip
    return reference, triton_lstm.LSTM.from_torch(reference, kernel="step")


def _inputs(case, device):
    generator = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=case.dtype)

    batch, longest = len(case.lengths), max(case.lengths)
    rows = case.num_layers * (2 if case.bidirectional else 1)
    padded = randn(longest, batch, INPUT_SIZE)
    hx = (randn(rows, batch, case.proj_size or HIDDEN), randn(rows, batch, HIDDEN)) if case.hx else None
    return padded, hx, generator


def _run(module, padded, lengths, enforce_sorted, hx, upstream):
    """Pack, run, and differentiate a fixed loss of the packed output, h_n and c_n."""
    padded = padded.detach().requires_grad_()
    hx = tuple(t.detach().requires_grad_() for t in hx) if hx is not None else None
    packed = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    output, (h_n, c_n) = module(packed, hx)
    assert output.batch_sizes is packed.batch_sizes
    assert output.sorted_indices is packed.sorted_indices and output.unsorted_indices is packed.unsorted_indices
    values = {"output": output.data, "h_n": h_n, "c_n": c_n}
    loss = sum((value * upstream[name].to(value.dtype)).sum() for name, value in values.items())
    leaves = {"input": padded, **({"h0": hx[0], "c0": hx[1]} if hx else {}), **dict(module.named_parameters())}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return values, dict(zip(leaves, grads, strict=True))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_packed_matches_torch(case, device, triton_only):
    reference, ours = _module(case, device)
    padded, hx, generator = _inputs(case, device)
    total = sum(case.lengths)
    out_width = (2 if case.bidirectional else 1) * (case.proj_size or HIDDEN)
    rows = case.num_layers * (2 if case.bidirectional else 1)

    def upstream_randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device)

    upstream = {
        "output": upstream_randn(total, out_width),
        "h_n": upstream_randn(rows, len(case.lengths), case.proj_size or HIDDEN),
        "c_n": upstream_randn(rows, len(case.lengths), HIDDEN),
    }
    theirs, their_grads = _run(reference, padded, case.lengths, case.enforce_sorted, hx, upstream)
    ref_values = ref_grads = {}
    if case.dtype in FLOAT64_REFERENCED:
        hx64 = tuple(t.double() for t in hx) if hx else None
        ref_values, ref_grads = _run(float64_twin(reference), padded.double(), case.lengths, case.enforce_sorted,
                                     hx64, upstream)  # fmt: skip
    with triton_only() as run:
        values, grads = _run(ours, padded, case.lengths, case.enforce_sorted, hx, upstream)
    assert run.launches["forward"] > 0 and run.launches["backward"] > 0
    for name, value in values.items():
        assert_conforms(name, value, theirs[name], ref_values.get(name))
    for name, value in grads.items():
        assert_conforms(f"grad {name}", value, their_grads[name], ref_grads.get(name))


@pytest.mark.parametrize("case", _MODES, ids=lambda c: c.id)
def test_packed_equals_each_sequence_alone(case, device, triton_only):
    """Each sequence of a packed batch gets what it gets when run by itself."""
    _, ours = _module(case, device)
    padded, hx, _ = _inputs(case, device)
    with torch.no_grad(), triton_only():
        packed = pack_padded_sequence(padded, list(case.lengths), enforce_sorted=case.enforce_sorted)
        output, (h_n, c_n) = ours(packed, hx)
        unpacked, _ = pad_packed_sequence(output)
        for b, length in enumerate(case.lengths):
            alone_hx = (hx[0][:, b : b + 1], hx[1][:, b : b + 1]) if hx else None
            alone, (alone_h, alone_c) = ours(padded[:length, b : b + 1], alone_hx)
            assert_conforms(f"output of sequence {b}", unpacked[:length, b : b + 1], alone)
            assert_conforms(f"h_n of sequence {b}", h_n[:, b : b + 1], alone_h)
            assert_conforms(f"c_n of sequence {b}", c_n[:, b : b + 1], alone_c)
            assert (unpacked[length:, b] == 0).all()


def test_pack_sequence_input(device, triton_only):
    """pack_sequence (a list of tensors, unsorted) in training mode with dropout: equal to torch with one seed."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(INPUT_SIZE, HIDDEN, num_layers=3, dropout=0.5, bidirectional=True, device=device)
    ours = triton_lstm.LSTM.from_torch(reference, kernel="step")
    if device.type != "cpu":
        pytest.skip("dropout masks equal torch's only on the CPU (cuDNN draws its own)")
    sequences = [torch.randn(n, INPUT_SIZE, device=device) for n in (3, 6, 1, 4)]
    packed = pack_sequence(sequences, enforce_sorted=False)
    torch.manual_seed(7)
    theirs, (their_h, their_c) = reference(packed)
    torch.manual_seed(7)
    with triton_only():
        output, (h_n, c_n) = ours(packed)
    assert_conforms("output", output.data, theirs.data)
    assert_conforms("h_n", h_n, their_h)
    assert_conforms("c_n", c_n, their_c)


def _bad_inputs(device):
    packed = pack_sequence([torch.randn(n, INPUT_SIZE, device=device) for n in (4, 2, 3)], enforce_sorted=False)
    wrong_size = pack_sequence([torch.randn(n, INPUT_SIZE + 1, device=device) for n in (4, 2)])
    wrong_dtype = pack_sequence([torch.randn(n, INPUT_SIZE, device=device, dtype=torch.float64) for n in (4, 2)])
    return {
        "input_size": (wrong_size, None),
        "dtype": (wrong_dtype, None),
        "h0_batch": (packed, (torch.zeros(1, 2, HIDDEN, device=device), torch.zeros(1, 3, HIDDEN, device=device))),
        "c0_size": (packed, (torch.zeros(1, 3, HIDDEN, device=device), torch.zeros(1, 3, HIDDEN + 1, device=device))),
        "hx_rank": (packed, (torch.zeros(3, HIDDEN, device=device), torch.zeros(3, HIDDEN, device=device))),
    }


@pytest.mark.parametrize("name", ["input_size", "dtype", "h0_batch", "c0_size", "hx_rank"])
def test_bad_packed_input_raises_dense_errors(name, device):
    """Packed input gets the dense path's checks and messages (torch 2.13 skips them; see the contract)."""
    packed, hx = _bad_inputs(device)[name]
    ours = triton_lstm.LSTM(INPUT_SIZE, HIDDEN, device=device, kernel="step")
    dense_input, _ = pad_packed_sequence(packed)
    reference = torch.nn.LSTM(INPUT_SIZE, HIDDEN, device=device)
    with pytest.raises((RuntimeError, ValueError)) as dense_error:
        reference(dense_input, hx)
    with pytest.raises(type(dense_error.value), match="^" + re.escape(str(dense_error.value)) + "$"):
        ours(packed, hx)


@pytest.mark.parametrize("kernel", ["step", "persistent"])
def test_packed_costs_the_padded_launches(kernel, device, triton_only):
    """A packed batch launches exactly what the padded batch of its longest sequence launches: per-row lengths are
    masked inside the kernels, nothing is re-packed per step."""
    torch.manual_seed(0)
    module = triton_lstm.LSTM(INPUT_SIZE, HIDDEN, num_layers=2, bidirectional=True, device=device, kernel=kernel)
    lengths = [6, 2, 4]
    padded = torch.randn(max(lengths), len(lengths), INPUT_SIZE, device=device)
    counts = []
    for value in (pack_padded_sequence(padded, lengths, enforce_sorted=False), padded):
        before = dict(triton_only.by_kernel)
        with triton_only():
            output, (h_n, _) = module(value)
            (output.data.sum() + h_n.sum()).backward()
        counts.append({name: n - before[name] for name, n in triton_only.by_kernel.items()})
    assert counts[0] == counts[1]
    assert counts[0][f"{kernel}_forward_kernel"] == (2 if kernel == "persistent" else 2 * max(lengths))
