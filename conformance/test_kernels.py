"""Kernel unit tests: the launchers against the float64 reference loop, with tiny blocks so that every mask and
tail is exercised, and with outputs poisoned (NaN) before the kernels run so that an unwritten element fails."""

import itertools

import pytest
import torch
import triton

import triton_lstm
from conformance.helpers import check_states_and_input_grads, reference_checker
from triton_lstm import launch, launch_persistent
from triton_lstm.reference import reference_lstm, reference_lstm_varlen

# Blocks smaller than the sizes below leave partial tiles on every axis. The GPU compiler needs tl.dot dimensions
# of at least 16, so on CUDA the sizes are raised instead (same tails, larger tiles).
TINY = {
    "step": ({"BLOCK_B": 2, "BLOCK_H": 4, "BLOCK_K": 4, "num_warps": 1},
             {"BLOCK_B": 2, "BLOCK_N": 4, "BLOCK_U": 4, "num_warps": 1}),
}  # fmt: skip
GPU = {
    "step": ({"BLOCK_B": 16, "BLOCK_H": 16, "BLOCK_K": 16, "num_warps": 4},
             {"BLOCK_B": 16, "BLOCK_N": 16, "BLOCK_U": 16, "num_warps": 4}),
}  # fmt: skip


def _persistent_plans(device, resident: bool):
    """Several programs per group, with tails on every axis: under the interpreter launched once per phase (the
    launch boundary stands in for the barrier), on a GPU as one launch whose programs meet at grid barriers. W_hh
    is resident (its whole reduction in one tile, split over two warps' chunks) or streamed in chunks."""
    if device.type == "cpu":  # sizes (T, B, I, H, P) = (4, 5, 3, 7, 5): 3 batch tiles, 4 programs
        block_b, units, columns, chunk, padded = 2, 2, 2, 4, 8
    else:  # (4, 21, 3, 37, 19): 2 batch tiles, 3 programs
        block_b, units, columns, chunk, padded = 16, 16, 16, 16, 64
    hidden = _sizes(device)[3]
    common = {"block_b": block_b, "block_u": units, "block_n": columns, "block_m": padded, "resident": resident,
              "programs": triton.cdiv(hidden, units), "batch_tiles": triton.cdiv(_sizes(device)[1], block_b),
              "num_warps": 4, "stepped": device.type == "cpu"}  # fmt: skip
    forward = launch_persistent.Plan(block_k=padded if resident else chunk, k_split=2 if resident else 1, **common)
    # The backward's partial products in pieces of 4 gate-gradient rows (as FMA products run on a GPU).
    backward = launch_persistent.Plan(block_k=chunk, k_split=1, k_chunk=4, **common)
    return forward, backward


LAUNCHERS = {
    "step": (launch.step_forward, launch.step_backward),
    "persistent": (launch_persistent.persistent_forward, launch_persistent.persistent_backward),
    "persistent-streamed": (launch_persistent.persistent_forward, launch_persistent.persistent_backward),
}


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the launchers allocate with torch.empty starts as NaN."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(launch.torch, "empty", empty)


def _sizes(device):
    # (T, B, I, H, P): B, H and P leave tails for the blocks used on this device.
    return (4, 5, 3, 7, 5) if device.type == "cpu" else (4, 21, 3, 37, 19)


def _lengths(batch, seq_len, device):
    """Ragged lengths with 1 and the maximum, unsorted."""
    lengths = [(seq_len - 1 - b) % seq_len + 1 for b in range(batch)]
    return torch.tensor(lengths, dtype=torch.int32, device=device)


def _layer_weights(num_directions, input_size, hidden, proj, bias, dtype, device, generator):
    def rand(*shape):
        return (torch.rand(*shape, generator=generator, dtype=torch.float64) - 0.5).to(device=device, dtype=dtype)

    h_out = proj or hidden
    weights = []
    for _ in range(num_directions):
        weights += [rand(4 * hidden, input_size), rand(4 * hidden, h_out)]
        if bias:
            weights += [rand(4 * hidden), rand(4 * hidden)]
        if proj:
            weights.append(rand(proj, hidden))
    return weights


def _stacked(weights, num_directions, bias, proj):
    per = len(weights) // num_directions
    groups = [weights[d * per : (d + 1) * per] for d in range(num_directions)]
    w_ih = torch.stack([g[0] for g in groups])
    w_hh = torch.stack([g[1] for g in groups])
    b_ih = torch.stack([g[2] for g in groups]) if bias else None
    b_hh = torch.stack([g[3] for g in groups]) if bias else None
    w_hr = torch.stack([g[-1] for g in groups]) if proj else None
    return w_ih, w_hh, b_ih, b_hh, w_hr


# Kernel-level tolerances against float64: the float32/float64 rows of the suite's table; half precision is
# checked at the module level with the three-way rule.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "ragged"])
@pytest.mark.parametrize("proj", [0, 1], ids=["noproj", "proj"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("num_directions", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("kernel", list(LAUNCHERS))
def test_kernels_against_reference(kernel, num_directions, bias, proj, ragged, dtype, device, poisoned):
    seq_len, batch, input_size, hidden, proj_size = _sizes(device)
    proj_size = proj_size if proj else 0
    generator = torch.Generator().manual_seed(7)
    weights = _layer_weights(num_directions, input_size, hidden, proj_size, bias, dtype, device, generator)
    h_out = proj_size or hidden

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    x, h0, c0 = (
        randn(seq_len, batch, input_size),
        randn(num_directions, batch, h_out),
        randn(num_directions, batch, hidden),
    )
    grad_out, grad_h, grad_c = randn(seq_len, batch, num_directions * h_out), randn(*h0.shape), randn(*c0.shape)

    lengths = _lengths(batch, seq_len, device) if ragged else None
    if ragged:
        # Positions past a row's length are not outputs: they get no upstream gradient.
        valid = torch.arange(seq_len, device=device)[:, None] < lengths[None, :]
        grad_out = grad_out * valid[:, :, None]

    leaves = [t.to(torch.float64, copy=True).requires_grad_() for t in (x, h0, c0, *weights)]
    options = {"num_layers": 1, "bias": bias, "bidirectional": num_directions == 2, "proj_size": proj_size}
    if ragged:
        ref = reference_lstm_varlen(leaves[0], (leaves[1], leaves[2]), leaves[3:], lengths.cpu(), **options)
    else:
        ref = reference_lstm(leaves[0], (leaves[1], leaves[2]), leaves[3:], **options)
    loss = sum((r * g.double()).sum() for r, g in zip(ref, (grad_out, grad_h, grad_c), strict=True))
    ref_grads = torch.autograd.grad(loss, leaves)

    w_ih, w_hh, b_ih, b_hh, w_hr = _stacked(weights, num_directions, bias, proj_size)
    bias_acc = b_ih.to(launch.accumulator_dtype(dtype)) + b_hh if bias else None
    forward, backward = LAUNCHERS[kernel]
    if kernel == "step":
        forward_options, backward_options = ({"config": c} for c in (TINY if device.type == "cpu" else GPU)[kernel])
    else:
        plans = _persistent_plans(device, resident=kernel == "persistent")
        forward_options, backward_options = ({"plan": p} for p in plans)
    output, h_n, c_n, saved = forward(x, h0, c0, w_ih, w_hh, bias_acc, w_hr, lengths, save=True, **forward_options)
    grads = backward(grad_out, grad_h, grad_c, x, h0, c0, w_ih, w_hh, w_hr, saved, lengths, **backward_options)
    d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, d_w_hr = grads

    check = reference_checker(dtype, launch.accumulator_dtype(dtype))
    check_states_and_input_grads(check, (output, h_n, c_n), ref, (d_x, d_h0, d_c0), ref_grads,
                                 valid if ragged else None)  # fmt: skip
    per = len(weights) // num_directions
    ref_w = [ref_grads[3 + d * per : 3 + (d + 1) * per] for d in range(num_directions)]
    check("d_w_ih", d_w_ih, torch.stack([g[0] for g in ref_w]))
    check("d_w_hh", d_w_hh, torch.stack([g[1] for g in ref_w]))
    if bias:
        check("d_bias (b_ih)", d_bias, torch.stack([g[2] for g in ref_w]))
        check("d_bias (b_hh)", d_bias, torch.stack([g[3] for g in ref_w]))
    if proj_size:
        check("d_w_hr", d_w_hr, torch.stack([g[-1] for g in ref_w]))


@pytest.mark.parametrize("kernel", ["step", "persistent"])
def test_inference_keeps_two_cell_slots(kernel, device, monkeypatch):
    """Without save, forward keeps two cell-state slots and no gates: nothing per step but the output itself."""
    generator = torch.Generator().manual_seed(3)
    weights = _layer_weights(1, 3, 6, 0, True, torch.float32, device, generator)
    w_ih, w_hh, b_ih, b_hh, _ = _stacked(weights, 1, True, 0)
    kept = {}
    real_prepare = launch.prepare_forward

    def prepare(*args, **kwargs):
        kept["buffers"] = real_prepare(*args, **kwargs)
        return kept["buffers"]

    monkeypatch.setattr(launch, "prepare_forward", prepare)
    x = torch.randn(9, 2, 3, generator=generator).to(device)
    h0 = torch.randn(1, 2, 6, generator=generator).to(device)
    *_, saved = LAUNCHERS[kernel][0](x, h0, h0.clone(), w_ih, w_hh, b_ih + b_hh, None, save=False)
    assert saved is None
    assert kept["buffers"].cs.shape[0] == 2 and kept["buffers"].gates.shape[0] == 1


@pytest.mark.parametrize("num_layers", [1, 3])
def test_persistent_launches_one_recurrent_kernel_per_layer(num_layers, device, triton_only):
    """The persistent path runs a whole layer (both directions) in one launch, forward and backward: not T."""
    torch.manual_seed(0)
    module = triton_lstm.LSTM(3, 6, num_layers=num_layers, bidirectional=True, device=device, kernel="persistent")
    x = torch.randn(7, 2, 3, device=device, requires_grad=True)
    with triton_only() as run:
        output, (h_n, c_n) = module(x)
        assert run.by_kernel["persistent_forward_kernel"] == num_layers
        (output.sum() + h_n.sum() + c_n.sum()).backward()
    assert run.by_kernel == {
        "step_forward_kernel": 0,
        "persistent_forward_kernel": num_layers,
        "step_backward_kernel": 0,
        "persistent_backward_kernel": num_layers,
    }


def test_step_launches_one_kernel_per_step_and_layer(device, triton_only):
    torch.manual_seed(0)
    module = triton_lstm.LSTM(3, 6, num_layers=2, device=device, kernel="step")
    x = torch.randn(5, 2, 3, device=device, requires_grad=True)
    with triton_only() as run:
        module(x)[0].sum().backward()
    assert run.by_kernel["step_forward_kernel"] == 2 * 5 and run.by_kernel["step_backward_kernel"] == 2 * 5


def test_auto_kernel_choice(monkeypatch):
    """kernel='auto': the step kernel under the interpreter; on a GPU the persistent kernel where its grid fits the
    device (float64 excepted), else the step kernel. Named kernels are honoured or refused."""
    from triton_lstm import functional, tuning

    cuda = torch.device("cuda")
    monkeypatch.setattr(tuning, "INTERPRETED", False)
    monkeypatch.setattr(
        launch_persistent, "device_facts", lambda device: launch_persistent.DeviceFacts(132, 90, 232_448)
    )
    fp16 = torch.float16
    assert functional.resolve_kernel("auto", cuda, (256, 256, 16, 1, fp16)) == "persistent"
    assert functional.resolve_kernel("auto", cuda, (256, 256, 16, 2, torch.float32)) == "persistent"
    # W_hh streamed from L2 (H_out > 256), and float64, which was not timed.
    assert functional.resolve_kernel("auto", cuda, (1024, 1024, 16, 1, fp16)) == "persistent"
    assert functional.resolve_kernel("auto", cuda, (256, 256, 16, 1, torch.float64)) == "step"
    assert functional.resolve_kernel("persistent", cuda, (1024, 1024, 16, 1, fp16)) == "persistent"
    # More programs than the GPU holds at once: 32 batch tiles x 2 directions x at least 8 programs > 132.
    too_many = (1024, 1024, 1024, 2, fp16)
    assert functional.resolve_kernel("auto", cuda, too_many) == "step"
    with pytest.raises(RuntimeError, match="co-resident programs"):
        functional.resolve_kernel("persistent", cuda, too_many)
    assert functional.resolve_kernel("step", cuda, too_many) == "step"
    # Without the interpreter, CPU tensors fall back to torch under "auto" and refuse a named kernel.
    assert functional.resolve_kernel("auto", torch.device("cpu"), (6, 6, 2, 1, torch.float32)) is None
    with pytest.raises(RuntimeError, match="cannot run on cpu tensors"):
        functional.resolve_kernel("persistent", torch.device("cpu"), (6, 6, 2, 1, torch.float32))
    monkeypatch.setattr(tuning, "INTERPRETED", True)
    assert functional.resolve_kernel("auto", torch.device("cpu"), (6, 6, 2, 1, torch.float32)) == "step"


SIZES = [(hidden, proj, batch, directions) for hidden in (4, 17, 256, 768, 1024, 1280, 2048) for proj in (0, 3)
         for batch in (1, 16, 20, 64, 256) for directions in (1, 2)]  # fmt: skip


@pytest.mark.parametrize("facts", [launch_persistent.DeviceFacts(132, 90, 232_448),
                                   launch_persistent.DeviceFacts(108, 80, 166_912)], ids=["H100", "A100"])  # fmt: skip
def test_persistent_plans_fit_the_device(facts):
    """Every plan covers the batch and the hidden units, fits the device's co-resident programs, keeps W_hh on chip
    only where its estimate fits a block's shared memory, and meets the kernels' shape rules; or says why not."""
    for (hidden, proj, batch, directions), dtype, backward, tf32 in itertools.product(
        SIZES, (torch.float16, torch.float32, torch.float64), (False, True), (False, True)
    ):
        h_out = min(proj, hidden - 1) or hidden
        plan = launch_persistent.plan_for(hidden, h_out, batch, directions, dtype, facts, backward=backward, tf32=tf32)
        if isinstance(plan, str):
            assert "co-resident programs" in plan
            continue
        assert plan.block_u * plan.programs >= hidden and plan.block_b * plan.batch_tiles >= batch
        assert plan.batch_tiles * plan.programs * directions <= facts.programs
        element = torch.finfo(dtype).bits // 8
        estimate = launch_persistent.shared_bytes(hidden, h_out, element, plan.block_b, plan.block_u, plan.block_n,
                                                  backward=backward)  # fmt: skip
        assert plan.resident == (estimate <= facts.shared_bytes), plan
        # tl.dot needs every dimension >= 16: 4 gates of >= 4 units, the batch tile, the chunks; the backward's
        # dL/dh @ W_hr has the units as N.
        assert plan.block_u >= 4 and plan.block_b >= 16 and plan.block_k >= 16
        if h_out != hidden and backward:
            assert plan.block_u >= 16
        if h_out != hidden and not backward:
            assert plan.block_n >= 16 and plan.block_n * plan.programs >= h_out


def test_persistent_plan_keeps_weights_on_chip_where_they_fit():
    """On a 132-SM H100/H200, W_hh stays resident for fp16/bf16 up to H = 1024 with one direction and with two, and
    in TF32 up to H = 1024 with one; past what all SMs' shared memory holds it is streamed."""
    facts = launch_persistent.DeviceFacts(132, 90, 232_448)

    def resident(hidden, batch, directions, dtype, tf32=False):
        return [launch_persistent.plan_for(hidden, hidden, batch, directions, dtype, facts, backward=backward,
                                           tf32=tf32).resident for backward in (False, True)]  # fmt: skip

    for dtype in (torch.float16, torch.bfloat16):
        for hidden in (256, 512, 768, 1024):
            assert resident(hidden, 16, 1, dtype) == [True, True], (dtype, hidden)
        assert resident(1024, 16, 2, dtype) == [True, True]
        assert resident(2048, 16, 1, dtype) == [False, False]
    assert resident(1024, 16, 1, torch.float32, tf32=True) == [True, True]
    assert resident(1024, 16, 2, torch.float32, tf32=True) == [False, False]
    too_many = launch_persistent.plan_for(1024, 1024, 1024, 2, torch.float16, facts)
    assert isinstance(too_many, str) and "co-resident programs" in too_many
