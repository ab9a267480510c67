"""Training semantics: gradcheck in float64, partial losses, retain_graph, double backward, what forward saves,
and a short training run that must end where torch.nn.LSTM's ends."""

import pytest
import torch

import triton_lstm
from conformance.helpers import assert_conforms

KERNELS = ("step", "persistent")
# (num_layers, bidirectional, proj_size): uni/bidirectional, projection, stacked layers.
GRADCHECK_MODES = [(1, False, 0), (1, True, 2), (2, True, 0), (2, False, 3)]


@pytest.mark.parametrize("mode", GRADCHECK_MODES, ids=lambda m: f"L{m[0]}-{'bi' if m[1] else 'uni'}-proj{m[2]}")
@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_float64(kernel, mode, device, triton_only):
    """Analytical gradients of input, h0, c0 and every weight equal finite differences (float64 end to end)."""
    num_layers, bidirectional, proj_size = mode
    torch.manual_seed(0)
    module = triton_lstm.LSTM(3, 4, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                              device=device, dtype=torch.float64, kernel=kernel)  # fmt: skip
    rows = num_layers * (2 if bidirectional else 1)
    x = torch.randn(3, 2, 3, device=device, dtype=torch.float64, requires_grad=True)  # odd T, B = 2
    h0 = torch.randn(rows, 2, proj_size or 4, device=device, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(rows, 2, 4, device=device, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in module.named_parameters()]

    def run(x, h0, c0, *weights):
        output, (h_n, c_n) = torch.func.functional_call(module, dict(zip(names, weights, strict=True)), (x, (h0, c0)))
        return output, h_n, c_n

    with triton_only():
        # fast_mode compares random projections of the Jacobian (two evaluations per input instead of two per
        # element), which keeps the interpreter's cost in seconds.
        assert torch.autograd.gradcheck(
            run, (x, h0, c0, *module.parameters()), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True
        )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("which", ["output", "h_n", "c_n"])
def test_loss_on_one_output_alone(which, kernel, device, triton_only):
    """A loss on output, h_n or c_n alone gives torch's gradients (the other outputs get no gradient at all)."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, device=device)
    ours = triton_lstm.LSTM.from_torch(reference, kernel=kernel)
    x = torch.randn(4, 2, 3, device=device)
    grads = []
    for module, guard in ((reference, None), (ours, triton_only)):
        leaf = x.clone().requires_grad_()
        if guard is None:
            output, (h_n, c_n) = module(leaf)
        else:
            with guard():
                output, (h_n, c_n) = module(leaf)
        chosen = {"output": output, "h_n": h_n, "c_n": c_n}[which]
        weights = torch.linspace(-1, 1, chosen.numel(), device=device).view_as(chosen)
        grads.append(torch.autograd.grad((chosen * weights).sum(), [leaf, *module.parameters()]))
    for index, (ours_grad, their_grad) in enumerate(zip(grads[1], grads[0], strict=True)):
        assert_conforms(f"grad {index} of a loss on {which}", ours_grad, their_grad)


@pytest.mark.parametrize("kernel", KERNELS)
def test_retain_graph_and_second_backward(kernel, device, triton_only):
    """backward(retain_graph=True) twice accumulates exactly twice the gradient."""
    torch.manual_seed(0)
    module = triton_lstm.LSTM(3, 5, bidirectional=True, device=device, kernel=kernel)
    x = torch.randn(4, 2, 3, device=device, requires_grad=True)
    with triton_only():
        output, (_, c_n) = module(x)
        loss = output.square().sum() + c_n.sum()
        loss.backward(retain_graph=True)
        first = [t.grad.clone() for t in (x, *module.parameters())]
        loss.backward()
    for once, tensor in zip(first, (x, *module.parameters()), strict=True):
        torch.testing.assert_close(tensor.grad, 2 * once, rtol=1e-6, atol=1e-7)


def test_double_backward_raises_a_clear_error(device):
    module = triton_lstm.LSTM(3, 5, device=device, kernel="step")
    x = torch.randn(4, 2, 3, device=device, requires_grad=True)
    (grad,) = torch.autograd.grad(module(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        grad.sum().backward()


def _saved_bytes(module, x, grad_mode):
    """Bytes autograd keeps for backward after one forward, counted by a saved-tensors hook."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), grad_mode():
        module(x)
    return sum(saved)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_forward_saves_per_step_only_for_training(dtype, kernel, device):
    """With a gradient required, forward saves per step and per hidden unit the four gates and the cell state in
    the accumulator dtype (20 bytes, 40 in float64) plus h in the input dtype; under no_grad, inference_mode or
    with nothing requiring grad it saves nothing at all."""
    torch.manual_seed(0)
    hidden, batch = 8, 2
    module = triton_lstm.LSTM(3, hidden, device=device, dtype=dtype, kernel=kernel)
    x = torch.randn(6, batch, 3, device=device, dtype=dtype)
    for grad_mode in (torch.no_grad, torch.inference_mode):
        assert _saved_bytes(module, x, grad_mode) == 0
    module.requires_grad_(False)
    assert _saved_bytes(module, x, torch.enable_grad) == 0
    module.requires_grad_(True)
    per_step = {}
    for seq_len in (6, 12):
        x = torch.randn(seq_len, batch, 3, device=device, dtype=dtype)
        per_step[seq_len] = _saved_bytes(module, x, torch.enable_grad)
    step_bytes = (per_step[12] - per_step[6]) / 6
    acc_bytes = 8 if dtype == torch.float64 else 4
    element = torch.finfo(dtype).bits // 8
    # Per step: gates (4H) and c (H) in the accumulator dtype, h (H) in the input dtype, and the layer input x.
    assert step_bytes == batch * (5 * hidden * acc_bytes + hidden * element + 3 * element)


@pytest.mark.parametrize("kernel", KERNELS)
def test_training_matches_torch(kernel, device, triton_only):
    """The same model trained 25 Adam steps from the same weights with torch.nn.LSTM and triton_lstm.LSTM ends with
    the same losses and weights."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3, device=device)
    ours = triton_lstm.LSTM.from_torch(reference, kernel=kernel)
    head = torch.nn.Linear(6, 1, device=device)
    heads = {"theirs": head, "ours": torch.nn.Linear(6, 1, device=device)}
    heads["ours"].load_state_dict(head.state_dict())
    generator = torch.Generator().manual_seed(1)
    # One batch fitted 25 times, so that the loss must fall.
    batch = (torch.randn(5, 3, 4, generator=generator).to(device), torch.randn(3, 1, generator=generator).to(device))
    batches = [batch] * 25
    losses = {}
    for name, module in (("theirs", reference), ("ours", ours)):
        optimizer = torch.optim.Adam([*module.parameters(), *heads[name].parameters()], lr=0.01)
        losses[name] = []
        for x, target in batches:
            if name == "ours":
                with triton_only():
                    output, _ = module(x)
            else:
                output, _ = module(x)
            loss = torch.nn.functional.mse_loss(heads[name](output[-1]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.detach())
    assert losses["ours"][-1] < losses["ours"][0]
    torch.testing.assert_close(torch.stack(losses["ours"]), torch.stack(losses["theirs"]), rtol=1e-4, atol=1e-5)
    for (name, weight), their_weight in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(weight, their_weight, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_dropout_training_gradients_match_torch_with_one_seed(device, triton_only):
    """Training mode with dropout between layers: output and every gradient equal torch's under the same seed."""
    if device.type != "cpu":
        pytest.skip("dropout masks equal torch's only on the CPU (cuDNN draws its own)")
    torch.manual_seed(0)
    reference = torch.nn.LSTM(3, 5, num_layers=3, dropout=0.4, bidirectional=True)
    ours = triton_lstm.LSTM.from_torch(reference, kernel="step")
    x = torch.randn(4, 2, 3)
    results = []
    for module, guarded in ((reference, False), (ours, True)):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(5)
        if guarded:
            with triton_only():
                output, (h_n, c_n) = module(leaf)
        else:
            output, (h_n, c_n) = module(leaf)
        grads = torch.autograd.grad(output.sum() + h_n.square().sum() + c_n.sum(), [leaf, *module.parameters()])
        results.append((output, *grads))
    for index, (ours_value, their_value) in enumerate(zip(results[1], results[0], strict=True)):
        assert_conforms(f"value {index}", ours_value, their_value)
