"""The conformance matrix: triton_lstm.LSTM against torch.nn.LSTM, outputs and every gradient."""

import zlib

import pytest
import torch

import triton_lstm
from conformance.helpers import FLOAT64_REFERENCED, assert_conforms, float64_twin
from conformance.matrix import Case, mode_cases, model_size_cases, shape_cases


def pytest_generate_tests(metafunc):
    if "matrix_case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full-matrix")
        cases = mode_cases(full) + shape_cases() + model_size_cases(torch.cuda.is_available())
        metafunc.parametrize("matrix_case", cases, ids=[c.id for c in cases])


def _inputs(case: Case, device, generator):
    """Fresh random input (and hx if the case gives one), plus random upstream gradients for every output."""

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=case.dtype)

    h_out = case.proj_size or case.hidden_size
    rows = case.num_layers * case.num_directions
    if case.unbatched:
        x = randn(case.seq_len, case.input_size)
        hx_shapes = [(rows, h_out), (rows, case.hidden_size)]
        out_shape = (case.seq_len, case.num_directions * h_out)
    else:
        x_shape = (case.batch, case.seq_len) if case.batch_first else (case.seq_len, case.batch)
        x = randn(*x_shape, case.input_size)
        hx_shapes = [(rows, case.batch, h_out), (rows, case.batch, case.hidden_size)]
        out_shape = (*x_shape, case.num_directions * h_out)
    hx = tuple(randn(*s) for s in hx_shapes) if case.hx else None
    upstream = (randn(*out_shape), randn(*hx_shapes[0]), randn(*hx_shapes[1]))
    return x, hx, upstream


def _run(module, x, hx, upstream):
    """Forward, then backward with fixed upstream gradients. Returns outputs and named gradients."""
    x = x.detach().requires_grad_()
    hx = tuple(t.detach().requires_grad_() for t in hx) if hx is not None else None
    output, (h_n, c_n) = module(x, hx)
    loss = sum((out * grad.to(out.dtype)).sum() for out, grad in zip((output, h_n, c_n), upstream, strict=True))
    leaves = {"input": x}
    if hx is not None:
        leaves.update(h0=hx[0], c0=hx[1])
    leaves.update(dict(module.named_parameters()))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"output": output, "h_n": h_n, "c_n": c_n}, dict(zip(leaves, grads, strict=True))


def _seed(case: Case) -> int:
    return zlib.crc32(case.id.encode())


def test_matches_torch(matrix_case: Case, device, triton_only):
    case = matrix_case
    generator = torch.Generator().manual_seed(_seed(case))
    torch.manual_seed(0)
    reference = torch.nn.LSTM(**case.module_kwargs, device=device, dtype=case.dtype)
    ours = triton_lstm.LSTM.from_torch(reference, kernel=case.kernel)
    x, hx, upstream = _inputs(case, device, generator)

    theirs_out, theirs_grads = _run(reference, x, hx, upstream)
    ref64_out = ref64_grads = {}
    if case.dtype in FLOAT64_REFERENCED:
        hx64 = tuple(t.double() for t in hx) if hx is not None else None
        ref64_out, ref64_grads = _run(float64_twin(reference), x.double(), hx64, upstream)
    with triton_only() as launches:
        ours_out, ours_grads = _run(ours, x, hx, upstream)
    assert launches.by_kernel[f"{case.kernel}_forward_kernel"] > 0
    assert launches.by_kernel[f"{case.kernel}_backward_kernel"] > 0

    for name, value in ours_out.items():
        assert_conforms(name, value, theirs_out[name], ref64_out.get(name))
    assert ours_grads.keys() == theirs_grads.keys()
    for name, value in ours_grads.items():
        assert_conforms(f"grad {name}", value, theirs_grads[name], ref64_grads.get(name))


@pytest.mark.parametrize("case", shape_cases(), ids=lambda c: c.id)
def test_inference_matches_torch(case: Case, device, triton_only):
    """The no-grad path keeps two cell-state slices instead of every step: same results, nothing saved."""
    generator = torch.Generator().manual_seed(_seed(case))
    torch.manual_seed(0)
    reference = torch.nn.LSTM(**case.module_kwargs, device=device, dtype=case.dtype)
    ours = triton_lstm.LSTM.from_torch(reference, kernel=case.kernel)
    x, hx, _ = _inputs(case, device, generator)
    with torch.no_grad():
        theirs = reference(x, hx)
        ref64 = float64_twin(reference)(x.double(), tuple(t.double() for t in hx) if hx else None)
        with triton_only() as launches:
            output, (h_n, c_n) = ours(x, hx)
    assert launches.by_kernel[f"{case.kernel}_forward_kernel"] > 0 and launches.launches["backward"] == 0
    for name, value, their, r64 in zip(
        ("output", "h_n", "c_n"), (output, h_n, c_n), (theirs[0], *theirs[1]), (ref64[0], *ref64[1]), strict=True
    ):
        assert_conforms(name, value, their, r64)
