"""A one-direction stack in one persistent launch per pass (``launch_stack``): its launches, its arithmetic with
several programs and tiles per layer, dropout drawn as torch draws it, and the choice between it and layer by layer.

The conformance matrix (``test_matrix.py``) runs every stacked case of the persistent kernel (2 and 3 layers, one
direction, every dtype, bias, projection, hx) through this launch too.
"""

import pytest
import torch
import triton
from torch.nn.utils.rnn import pack_sequence

import triton_lstm
from conformance.helpers import assert_conforms, check_states_and_input_grads, reference_checker
from triton_lstm import functional, launch, launch_persistent, launch_stack, tuning
from triton_lstm.reference import reference_lstm, reference_lstm_varlen


@pytest.mark.parametrize("proj_size", [0, 2], ids=["noproj", "proj"])
@pytest.mark.parametrize("num_layers", [2, 3])
def test_one_launch_runs_every_layer(num_layers, proj_size, device, triton_only):
    """One forward and one backward launch of the persistent kernels for all layers (not one per layer)."""
    torch.manual_seed(0)
    module = triton_lstm.LSTM(3, 6, num_layers=num_layers, proj_size=proj_size, device=device, kernel="persistent")
    x = torch.randn(7, 2, 3, device=device, requires_grad=True)
    with triton_only() as run:
        output, (h_n, c_n) = module(x)
        assert run.by_kernel["persistent_forward_kernel"] == 1
        (output.sum() + h_n.sum() + c_n.sum()).backward()
    assert run.by_kernel["persistent_forward_kernel"] == 1 and run.by_kernel["persistent_backward_kernel"] == 1
    assert run.by_kernel["step_forward_kernel"] == 0 and run.by_kernel["step_backward_kernel"] == 0


def test_packed_input_runs_in_one_launch(device, triton_only):
    torch.manual_seed(0)
    module = triton_lstm.LSTM(3, 6, num_layers=3, device=device, kernel="persistent")
    packed = pack_sequence([torch.randn(n, 3, device=device) for n in (2, 5, 3)], enforce_sorted=False)
    with triton_only() as run:
        output, _ = module(packed)
        output.data.sum().backward()
    assert run.by_kernel["persistent_forward_kernel"] == 1 and run.by_kernel["persistent_backward_kernel"] == 1


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_dropout_matches_torch_with_one_seed(packed, device, triton_only):
    """Training with dropout between the layers of a stacked launch: the masks are drawn as torch draws them (same
    calls, order and shapes, the packed rows for packed input), so output and every gradient equal torch's."""
    if device.type != "cpu":
        pytest.skip("dropout masks equal torch's only on the CPU (cuDNN draws its own)")
    torch.manual_seed(0)
    reference = torch.nn.LSTM(3, 5, num_layers=3, dropout=0.4, proj_size=2)
    ours = triton_lstm.LSTM.from_torch(reference, kernel="persistent")
    sequences = [torch.randn(n, 3) for n in (4, 2, 3)]
    results = []
    for module, guarded in ((reference, False), (ours, True)):
        leaves = [s.clone().requires_grad_() for s in sequences]
        inputs = pack_sequence(leaves, enforce_sorted=False) if packed else torch.stack([s[:2] for s in leaves], 1)
        torch.manual_seed(5)
        with triton_only() if guarded else torch.enable_grad():
            output, (h_n, c_n) = module(inputs)
            data = output.data if packed else output
            grads = torch.autograd.grad(data.square().sum() + h_n.sum() + c_n.sum(), [*leaves, *module.parameters()])
        results.append((data, h_n, c_n, *grads))
    for index, (ours_value, their_value) in enumerate(zip(results[1], results[0], strict=True)):
        assert_conforms(f"value {index}", ours_value, their_value)


def _weights(num_layers, input_size, hidden, proj, dtype, device, generator):
    """Random weights of a one-direction stack, in torch's flat order."""

    def rand(*shape):
        return (torch.rand(*shape, generator=generator, dtype=torch.float64) - 0.5).to(device=device, dtype=dtype)

    h_out = proj or hidden
    weights = []
    for layer in range(num_layers):
        weights += [rand(4 * hidden, input_size if layer == 0 else h_out), rand(4 * hidden, h_out), rand(4 * hidden),
                    rand(4 * hidden)]  # fmt: skip
        if proj:
            weights.append(rand(proj, hidden))
    return weights


def _tiny_plans(device, batch, hidden):
    """Several programs and batch tiles per layer, tails on every axis: under the interpreter launched once per
    wavefront phase (the launch boundary stands in for the barrier), on a GPU as one launch meeting at barriers."""
    block_b, units, columns, chunk, padded = (2, 2, 2, 4, 8) if device.type == "cpu" else (16, 16, 16, 16, 64)
    common = {"block_b": block_b, "block_u": units, "block_n": columns, "block_m": padded, "resident": True,
              "programs": triton.cdiv(hidden, units), "batch_tiles": triton.cdiv(batch, block_b), "num_warps": 4,
              "stepped": device.type == "cpu"}  # fmt: skip
    forward = launch_persistent.Plan(block_k=padded, k_split=2, **common)
    backward = launch_persistent.Plan(block_k=chunk, k_split=1, k_chunk=4, **common)
    return forward, backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "ragged"])
@pytest.mark.parametrize("proj", [0, 1], ids=["noproj", "proj"])
@pytest.mark.parametrize("dropout", [False, True], ids=["nodropout", "dropout"])
def test_stack_kernels_against_reference(dropout, proj, ragged, dtype, device):
    """stack_forward and stack_backward with tiny tiles against the float64 reference loop: outputs, h_n, c_n and
    every gradient, three layers."""
    num_layers = 3
    seq_len, batch, input_size, hidden, proj_size = (4, 5, 3, 7, 5) if device.type == "cpu" else (4, 21, 3, 37, 19)
    proj_size = proj_size if proj else 0
    h_out = proj_size or hidden
    generator = torch.Generator().manual_seed(11)
    weights = _weights(num_layers, input_size, hidden, proj_size, dtype, device, generator)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    x, h0, c0 = randn(seq_len, batch, input_size), randn(num_layers, batch, h_out), randn(num_layers, batch, hidden)
    grad_out, grad_h, grad_c = randn(seq_len, batch, h_out), randn(*h0.shape), randn(*c0.shape)
    masks = None
    if dropout:
        keep = torch.rand(num_layers - 1, seq_len, batch, h_out, generator=generator) > 0.3
        masks = (keep / 0.7).to(device=device, dtype=dtype)
    lengths = None
    if ragged:
        lengths = torch.tensor([(seq_len - 1 - b) % seq_len + 1 for b in range(batch)], dtype=torch.int32,
                               device=device)  # fmt: skip
        valid = torch.arange(seq_len, device=device)[:, None] < lengths[None, :]
        grad_out = grad_out * valid[:, :, None]

    leaves = [t.to(torch.float64, copy=True).requires_grad_() for t in (x, h0, c0, *weights)]
    options = {"num_layers": num_layers, "bias": True, "bidirectional": False, "proj_size": proj_size,
               "dropout_masks": masks}  # fmt: skip
    if ragged:
        ref = reference_lstm_varlen(leaves[0], (leaves[1], leaves[2]), leaves[3:], lengths.cpu(), **options)
    else:
        ref = reference_lstm(leaves[0], (leaves[1], leaves[2]), leaves[3:], **options)
    loss = sum((r * g.double()).sum() for r, g in zip(ref, (grad_out, grad_h, grad_c), strict=True))
    ref_grads = torch.autograd.grad(loss, leaves)

    per = 4 + (proj_size > 0)
    layers = [weights[layer * per : (layer + 1) * per] for layer in range(num_layers)]
    w_ih_rest = torch.stack([w[0] for w in layers[1:]])
    w_hh = torch.stack([w[1] for w in layers])
    bias = torch.stack([w[2].to(launch.accumulator_dtype(dtype)) + w[3] for w in layers])
    w_hr = torch.stack([w[4] for w in layers]) if proj_size else None
    forward_plan, backward_plan = _tiny_plans(device, batch, hidden)
    with tuning.serialized():
        output, h_n, c_n, saved = launch_stack.stack_forward(x, h0, c0, layers[0][0], w_ih_rest, w_hh, bias, w_hr,
                                                             masks, lengths, save=True, plan=forward_plan)  # fmt: skip
        grads = launch_stack.stack_backward(grad_out, grad_h, grad_c, x, h0, c0, layers[0][0], w_ih_rest, w_hh, w_hr,
                                            masks, saved, lengths, plan=backward_plan)  # fmt: skip
    d_x, d_h0, d_c0, d_w_ih0, d_w_ih_rest, d_w_hh, d_bias, d_w_hr = grads
    check = reference_checker(dtype)
    check_states_and_input_grads(check, (output, h_n, c_n), ref, (d_x, d_h0, d_c0), ref_grads,
                                 valid if ragged else None)  # fmt: skip
    ref_w = [ref_grads[3 + layer * per : 3 + (layer + 1) * per] for layer in range(num_layers)]
    check("d_w_ih (layer 0)", d_w_ih0, ref_w[0][0])
    check("d_w_ih (layers 1+)", d_w_ih_rest, torch.stack([g[0] for g in ref_w[1:]]))
    check("d_w_hh", d_w_hh, torch.stack([g[1] for g in ref_w]))
    check("d_bias (b_ih)", d_bias, torch.stack([g[2] for g in ref_w]))
    check("d_bias (b_hh)", d_bias, torch.stack([g[3] for g in ref_w]))
    if proj_size:
        check("d_w_hr", d_w_hr, torch.stack([g[4] for g in ref_w]))


def test_stack_or_layer_by_layer(monkeypatch):
    """The stacked launch runs where the persistent kernel was chosen, with one direction and several layers, and
    both passes' stacked plans fit the device; elsewhere the layers run one after another."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(tuning, "INTERPRETED", False)
    h100 = launch_persistent.DeviceFacts(132, 90, 232_448)
    monkeypatch.setattr(launch_persistent, "device_facts", lambda device: h100)
    fp16 = torch.float16
    assert functional.stacks("persistent", (256, 256, 16, 1, fp16), 2, cuda)
    assert functional.stacks("persistent", (1024, 1024, 16, 1, fp16), 2, cuda)
    assert not functional.stacks("persistent", (256, 256, 16, 2, fp16), 2, cuda)  # two directions
    assert not functional.stacks("persistent", (256, 256, 16, 1, fp16), 1, cuda)  # one layer
    assert not functional.stacks("step", (256, 256, 16, 1, fp16), 2, cuda)
    # 16 batch tiles x 3 layers x at least 16 programs (128 units a program at most) need more than 132 programs.
    assert not functional.stacks("persistent", (2048, 2048, 256, 1, fp16), 3, cuda)
    # A stack's W_ih slices count towards shared memory: 3 layers of H = 512 stay resident, 2 of H = 1024 do not.
    plan = launch_stack.plan(512, 512, 16, 3, fp16, cuda)
    assert plan.programs * 3 <= 132 and plan.resident
    assert not launch_stack.plan(1024, 1024, 16, 2, fp16, cuda).resident
