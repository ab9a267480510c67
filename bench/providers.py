"""The LSTMs under test (providers), the inputs of a configuration, and the timed unit of work.

Providers: ``torch`` (torch.nn.LSTM: cuDNN on a GPU), ``triton_<kernel>`` for every kernel in
``triton_lstm.functional.KERNELS`` (so a new kernel is benchmarked as soon as it is listed there), and ``naive``,
a plain PyTorch loop over time steps written here as the baseline. Every provider of a configuration gets the same
weights and the same inputs.

Import this module only after ``bench.environment.use_interpreter_without_cuda()``: it imports triton_lstm.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import triton_lstm
from bench.configs import BenchConfig
from triton_lstm.functional import KERNELS

TORCH = "torch"
NAIVE = "naive"


def provider_names() -> tuple[str, ...]:
    """Every provider, torch first (speedups and errors are measured against it) and the baseline last."""
    return (TORCH, *(f"triton_{kernel}" for kernel in KERNELS), NAIVE)


class NaiveLSTM(nn.Module):
    """The baseline: torch.nn.LSTM's computation as a plain PyTorch loop over time steps, on its parameters.

    The input projection of each layer-direction is one matmul over all steps; everything else (the recurrent
    matmul, the gates, the cell update, the projection) runs step by step in eager PyTorch, in the input's dtype.
    A PackedSequence runs padded, with each row's state frozen past its length. Takes seq-first input (zero
    initial state) and returns ``output, (h_n, c_n)`` as torch.nn.LSTM does.
    """

    def __init__(self, reference: nn.LSTM):
        super().__init__()
        self.reference = reference

    def forward(self, input):
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            x, lengths = pad_packed_sequence(packed)
            lengths = lengths.to(x.device)
        else:
            x, lengths = input, None
        ref = self.reference
        directions = 2 if ref.bidirectional else 1
        h_n, c_n = [], []
        for layer in range(ref.num_layers):
            outputs = []
            for direction in range(directions):
                weights = ref.all_weights[layer * directions + direction]
                seq = _reverse(x, lengths) if direction else x
                output, h, c = self._run_direction(seq, weights, lengths)
                outputs.append(_reverse(output, lengths) if direction else output)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, dim=-1)
        if packed is not None:
            x = _repack(x, lengths, packed)
        return x, (torch.stack(h_n), torch.stack(c_n))

    def _run_direction(self, x, weights, lengths):
        ref = self.reference
        w_ih, w_hh = weights[0], weights[1]
        w_hr = weights[-1] if ref.proj_size else None
        pre = x @ w_ih.t()
        if ref.bias:
            pre = pre + (weights[2] + weights[3])
        batch = x.shape[1]
        h = x.new_zeros(batch, ref.proj_size or ref.hidden_size)
        c = x.new_zeros(batch, ref.hidden_size)
        valid = None if lengths is None else torch.arange(x.shape[0], device=x.device)[:, None] < lengths
        hs = []
        for step in range(x.shape[0]):
            i, f, g, o = (pre[step] + h @ w_hh.t()).chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            if w_hr is not None:
                h_new = h_new @ w_hr.t()
            if valid is None:
                h, c = h_new, c_new
            else:  # rows past their length keep their last state
                h = torch.where(valid[step, :, None], h_new, h)
                c = torch.where(valid[step, :, None], c_new, c)
            hs.append(h)
        return torch.stack(hs), h, c


def _reverse(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Each row's sequence reversed in time: all of T when padded, its first ``length`` steps when packed."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0], device=x.device)[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(0, index[..., None].expand_as(x))


def _repack(x: torch.Tensor, lengths: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """Padded (T, B, F) output as a PackedSequence with the batch order of the input ``like``."""
    order = like.sorted_indices
    if order is not None:
        x, lengths = x.index_select(1, order), lengths[order]
    data = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def make_reference(config: BenchConfig, device: torch.device, seed: int = 0) -> nn.LSTM:
    """The configuration's torch.nn.LSTM, with weights drawn from ``seed``: the ``torch`` provider itself, and
    the source of every other provider's weights."""
    torch.manual_seed(seed)
    return nn.LSTM(
        config.input_size,
        config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        proj_size=config.proj_size,
        device=device,
        dtype=config.torch_dtype,
    )


def build_provider(name: str, reference: nn.LSTM) -> nn.Module:
    """The module ``name`` runs, with ``reference``'s weights (shared by ``naive``, copied by Triton's)."""
    if name == TORCH:
        return reference
    if name == NAIVE:
        return NaiveLSTM(reference)
    kernel = name.removeprefix("triton_")
    if name == kernel or kernel not in KERNELS:
        raise ValueError(f"unknown provider {name!r}; choose from {', '.join(provider_names())}")
    return triton_lstm.LSTM.from_torch(reference, kernel=kernel)


@dataclass
class Workload:
    """One configuration's inputs, drawn once and shared by every provider.

    x: (T, B, I) padded input; lengths: the sequence lengths, longest first (used when packed); grad_output: the
    gradient fed to backward, shaped like the output (its packed data when packed).
    """

    config: BenchConfig
    x: torch.Tensor
    lengths: list[int]
    grad_output: torch.Tensor

    @classmethod
    def draw(cls, config: BenchConfig, device: torch.device, seed: int = 0) -> "Workload":
        generator = torch.Generator(device=device).manual_seed(seed)
        dtype = config.torch_dtype
        x = torch.randn(config.seq_len, config.batch, config.input_size, generator=generator, device=device)
        width = config.num_directions * config.output_size
        rows = (config.tokens,) if config.packed else (config.seq_len, config.batch)
        grad_output = torch.randn(*rows, width, generator=generator, device=device)
        return cls(config, x.to(dtype), config.lengths(), grad_output.to(dtype))

    def model_input(self, x: torch.Tensor):
        """What the module is called with: ``x`` itself, or packed (inside the timed call, as a user pays for it)."""
        if not self.config.packed:
            return x
        return pack_padded_sequence(x, torch.tensor(self.lengths), enforce_sorted=True)


def output_data(output) -> torch.Tensor:
    """The output tensor of a call: the packed data when packed."""
    return output.data if isinstance(output, PackedSequence) else output


def make_call(module: nn.Module, workload: Workload, mode: str) -> Callable[[], torch.Tensor]:
    """One timed unit of work; returns the forward output.

    "forward": inference, the module in eval mode under ``torch.no_grad()``. "forward_backward": training, the
    forward then the gradients of the input and of every parameter for ``workload.grad_output`` (computed with
    ``torch.autograd.grad``, so nothing accumulates between calls).
    """
    if mode == "forward":
        module.eval()

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return output_data(module(workload.model_input(workload.x))[0])

        return forward

    if mode != "forward_backward":
        raise ValueError(f"unknown mode {mode!r}")
    module.train()
    x = workload.x.detach().requires_grad_()
    inputs = [x, *(p for p in module.parameters() if p.requires_grad)]

    def forward_backward() -> torch.Tensor:
        output = output_data(module(workload.model_input(x))[0])
        torch.autograd.grad(output, inputs, workload.grad_output)
        return output.detach()

    return forward_backward


def accepts_packed(device: torch.device) -> bool:
    """Whether ``triton_lstm.LSTM`` takes a PackedSequence (rather than raising NotImplementedError), on a tiny
    problem."""
    config = BenchConfig(batch=2, seq_len=2, hidden_size=4, input_size=3, dtype="float32", packed=True)
    module = triton_lstm.LSTM.from_torch(make_reference(config, device))
    workload = Workload.draw(config, device)
    try:
        with torch.no_grad():
            module(workload.model_input(workload.x))
    except NotImplementedError:
        return False
    except Exception:  # accepted but failing: every packed row of the sweep will record the error
        return True
    return True
