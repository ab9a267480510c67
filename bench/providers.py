"""The LSTMs under test (providers), the inputs of a configuration, and the timed unit of work.

Providers, in the order the sweep runs them (torch first: every other row's ratios need it):

- ``torch``: torch.nn.LSTM (cuDNN on a GPU).
- ``triton_<kernel>``: ``triton_lstm.LSTM(kernel=<kernel>)`` for every kernel in ``triton_lstm.functional.KERNELS``
  (so a new kernel is benchmarked as soon as it is listed there). These are "ours"; every other provider is a peer.
- ``compiled_cell``: what a user would write: the LSTM cell's math as one function under ``torch.compile``, called
  in a Python loop over time steps (the input projection hoisted out of the loop as one matmul).
- ``flashrnn``: FlashRNN (``pip install flashrnn``, NX-AI), its fastest backend that runs the configuration.
- ``naive``: the same loop as ``compiled_cell`` in eager PyTorch, the baseline.

Each provider says why it cannot run a configuration (a package that is not installed, a feature it lacks): the
sweep writes those rows as ``skipped`` with the reason, so nothing is silently left out. Every provider of a
configuration gets the same weights (those of the ``torch`` provider) and the same inputs.

Import this module only after ``bench.environment.use_interpreter_without_cuda()``: it imports triton_lstm.
"""

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import triton_lstm
from bench.configs import BenchConfig
from triton_lstm.functional import KERNELS

TORCH = "torch"
NAIVE = "naive"
COMPILED_CELL = "compiled_cell"
FLASHRNN = "flashrnn"
OURS_PREFIX = "triton_"
# The FlashRNN release the sweep was written against (its API: flashrnn.flashrnn(Wx, R, b, config=...)); the GPU
# machine installs this wheel from bench/wheels/ (bench/README.md).
FLASHRNN_VERSION = "1.0.8"


def is_ours(provider: str) -> bool:
    """Whether ``provider`` is one of triton_lstm's kernels (every other provider is a peer)."""
    return provider.startswith(OURS_PREFIX)


# ---------------------------------------------------------------------------------------------------------------
# The cell loop shared by the naive baseline and compiled_cell.


def lstm_cell(pre, h, c, w_hh, w_hr=None, valid=None):
    """One LSTM step for a batch: gates from the precomputed input projection ``pre`` (bias included) and
    ``h @ w_hh^T``, the cell update, the optional projection, and rows past their length (``valid`` False) kept as
    they were. Returns ``(h, c)``."""
    i, f, g, o = (pre + h @ w_hh.t()).chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    if valid is not None:
        h_new = torch.where(valid, h_new, h)
        c_new = torch.where(valid, c_new, c)
    return h_new, c_new


class NaiveLSTM(nn.Module):
    """The baseline: torch.nn.LSTM's computation as a plain PyTorch loop over time steps, on its parameters.

    The input projection of each layer-direction is one matmul over all steps; everything else (the recurrent
    matmul, the gates, the cell update, the projection) runs step by step (``self.cell``: eager here), in the
    input's dtype. A PackedSequence runs padded, with each row's state frozen past its length. Takes seq-first input
    (zero initial state) and returns ``output, (h_n, c_n)`` as torch.nn.LSTM does.
    """

    variant = "eager"

    def __init__(self, reference: nn.LSTM):
        super().__init__()
        self.reference = reference
        self.cell = lstm_cell

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
        valid = None if lengths is None else (torch.arange(x.shape[0], device=x.device)[:, None] < lengths)[..., None]
        hs = []
        for step in range(x.shape[0]):
            h, c = self.cell(pre[step], h, c, w_hh, w_hr, None if valid is None else valid[step])
            hs.append(h)
        return torch.stack(hs), h, c


def compile_backend(device: torch.device) -> str:
    """torch.compile's backend for ``compiled_cell``: Inductor on a GPU; on the CPU ``aot_eager`` (the same
    tracing and autograd, no code generation: Inductor's C++ build takes about 40 s here, and the CPU rows only
    check the pipeline)."""
    return "inductor" if device.type == "cuda" else "aot_eager"


class CompiledCellLSTM(NaiveLSTM):
    """``compiled_cell``: the loop of ``NaiveLSTM`` with its cell under ``torch.compile(fullgraph=True,
    dynamic=False)``: one compiled graph per step (the recurrent matmul and one fused pointwise kernel on a GPU),
    called T times per layer and direction, forward and backward through AOTAutograd. Supports everything
    torch.nn.LSTM does (layers, directions, projection, packed input as masking)."""

    def __init__(self, reference: nn.LSTM, backend: str):
        super().__init__(reference)
        # Compiled graphs are cached per code object: a new module starts from a clean cache, so that a sweep's
        # hundreds of shapes never hit the recompile limit, past which Dynamo would fall back to eager silently
        # (made an error where this torch has the switch). Compiled kernels stay in the on-disk caches.
        torch._dynamo.reset()
        if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
            torch._dynamo.config.fail_on_recompile_limit_hit = True
        self.variant = backend
        self.cell = torch.compile(lstm_cell, backend=backend, fullgraph=True, dynamic=False)


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


# ---------------------------------------------------------------------------------------------------------------
# FlashRNN.


def flashrnn_backends(config: BenchConfig, device: torch.device) -> tuple[str, ...]:
    """FlashRNN's backends to try for ``config``, fastest first (its paper and README: the fused CUDA kernel, then
    the alternating one, cuBLAS matmul and a pointwise kernel per step).

    Its Triton backend (``triton_fused``) takes heads of at most 64 units: an LSTM is one head of H units, so it
    runs only H <= 64. The fused kernel multiplies float32 in TF32 whatever torch's flags (``wmma::precision::tf32``
    in its source), so float32 without TF32 runs the alternating kernel only, whose cuBLAS calls use torch's handle
    and so follow torch's flags. Without a GPU, ``vanilla`` (FlashRNN's PyTorch loop) checks the pipeline.
    """
    if device.type != "cuda":
        return ("vanilla",)
    if config.dtype == "float32" and not config.tf32:
        return ("cuda",)
    return ("triton_fused", "cuda_fused", "cuda") if config.hidden_size <= 64 else ("cuda_fused", "cuda")


class FlashRNNLSTM(nn.Module):
    """torch.nn.LSTM's computation through FlashRNN, on the reference's parameters.

    FlashRNN takes the input projection precomputed (``Wx``: T, B, 4 gates, 1 head, H), the recurrent weights as
    ``R``: 4 gates, 1 head, H out, H in (a view of ``weight_hh``) and one bias (``b_ih + b_hh``), with the gates in
    torch's order (i, f, g, o). Each layer's input projection is one matmul here, as in ``NaiveLSTM``; layers are
    stacked calls. The first call tries the backends in ``flashrnn_backends`` order and keeps the first that runs
    (``variant``).
    """

    def __init__(self, reference: nn.LSTM, backends: tuple[str, ...]):
        super().__init__()
        self.reference = reference
        self.backends = backends
        self.variant = ""
        self._errors: list[str] = []

    def forward(self, x):
        ref = self.reference
        h_n, c_n = [], []
        for layer in range(ref.num_layers):
            weights = ref.all_weights[layer]
            x, h, c = self._run_layer(x, weights)
            h_n.append(h)
            c_n.append(c)
        return x, (torch.stack(h_n), torch.stack(c_n))

    def _run_layer(self, x, weights):
        ref = self.reference
        seq_len, batch, hidden = x.shape[0], x.shape[1], ref.hidden_size
        w_ih, w_hh = weights[0], weights[1]
        wx = (x @ w_ih.t()).view(seq_len, batch, 4, 1, hidden)
        r = w_hh.view(4, 1, hidden, hidden)
        b = (weights[2] + weights[3]) if ref.bias else w_hh.new_zeros(4 * hidden)
        b = b.view(4, 1, hidden)
        if self.variant:
            return self._call(self.variant, wx, r, b)
        for backend in self.backends:
            try:
                result = self._call(backend, wx, r, b)
            except Exception as error:  # this backend cannot run the size: the next one may
                self._errors.append(f"{backend}: {type(error).__name__}: {error}")
                continue
            self.variant = backend
            return result
        raise RuntimeError("no FlashRNN backend ran this configuration: " + " | ".join(self._errors))

    def _call(self, backend, wx, r, b):
        flashrnn = _flashrnn_module()
        _, batch, _, _, hidden = wx.shape
        config = flashrnn.FlashRNNConfig(
            backend=backend, function="lstm", num_heads=1, head_dim=hidden, batch_size=batch,
            dtype=_FLASHRNN_DTYPES[wx.dtype], input_shape="TBGHD", output_shape="STBHD",
        )  # fmt: skip
        states, last = flashrnn.flashrnn(wx, r, b, config=config)
        # states: (2 states h and c, T, B, 1 head, H); last: the same at the last step only.
        return states[0, :, :, 0], last[0, -1, :, 0], last[1, -1, :, 0]


_FLASHRNN_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def _flashrnn_module():
    """The ``flashrnn`` package, with two changes to how it builds its CUDA extensions (never to what runs):

    - no random wait before a build or load (its ``time.sleep`` of up to 10 s, against races of builds of one
      extension from several processes: the sweep's processes never build the same configuration);
    - with BENCH_WARM_DIR set, the fused kernel's tile parameters, which FlashRNN finds anew in every process with a
      constraint solver and a bisection of builds (tens of seconds a size in Python), are kept on disk after the
      first search and reused: a later process loads that same extension from torch's build cache directly.
    """
    module = importlib.import_module("flashrnn")
    init = importlib.import_module("flashrnn.flashrnn.cuda_init")
    if getattr(init, "_bench_patched", False):
        return module
    init.time = _NoSleep()
    init._bench_patched = True
    directory = _warm_dir()
    if directory is not None:
        _cache_fused_solutions(directory / "flashrnn-solutions")
    return module


def _cache_fused_solutions(directory: Path) -> None:
    """Wrap FlashRNN's ``load_parametric_and_test_and_bisect`` (1.0.8) with a cache of the flags of its final
    build, keyed by the extension's name, constraints and flags."""
    import hashlib
    import json

    fused = importlib.import_module("flashrnn.flashrnn.flashrnn")
    parametric = importlib.import_module("flashrnn.flashrnn.cuda_init_parametric")
    search = fused.load_parametric_and_test_and_bisect

    def cached(*, name, sources, constraint_str, extra_cflags=(), extra_cuda_cflags=(), **kwargs):
        text = json.dumps([name, constraint_str, list(extra_cflags), list(extra_cuda_cflags)])
        path = directory / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
        if path.exists():
            flags = json.loads(path.read_text())
            return parametric.load(name=name, sources=sources, extra_cflags=flags, extra_cuda_cflags=extra_cuda_cflags)
        builds = []
        load = parametric.load

        def recording_load(**arguments):
            builds.append(list(arguments["extra_cflags"]))
            return load(**arguments)

        parametric.load = recording_load
        try:
            result = search(name=name, sources=sources, constraint_str=constraint_str, extra_cflags=extra_cflags,
                            extra_cuda_cflags=extra_cuda_cflags, **kwargs)  # fmt: skip
        finally:
            parametric.load = load
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(builds[-1]))  # the last build is the one returned
        return result

    fused.load_parametric_and_test_and_bisect = cached


class _NoSleep:
    """The ``time`` module as FlashRNN's build helper sees it: ``sleep`` does nothing."""

    def __getattr__(self, name):
        import time

        return getattr(time, name)

    @staticmethod
    def sleep(seconds):
        return None


def flashrnn_unsupported(config: BenchConfig) -> str | None:
    """Why FlashRNN cannot run ``config`` (None when it can): what its LSTM lacks."""
    if config.bidirectional:
        return "flashrnn has no reverse direction (bidirectional)"
    if config.proj_size:
        return "flashrnn's LSTM has no projection (proj_size)"
    if config.packed:
        return "flashrnn takes no per-row lengths (PackedSequence)"
    if config.dtype not in ("float16", "bfloat16", "float32"):
        return f"flashrnn's kernels take float16, bfloat16 or float32, not {config.dtype}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The providers.


@dataclass(frozen=True)
class Provider:
    """One LSTM implementation the sweep times.

    ``unavailable()``: why it cannot run here at all (a package missing), or None. ``unsupported(config,
    device)``: why it cannot run this configuration, or None. ``build(reference, config, device)``: the module,
    sharing or copying ``reference``'s weights; a module's ``variant`` attribute, read after its first call, names
    what ran (a backend, the kernel ``auto`` chose) in the row's ``variant`` column.
    """

    name: str
    description: str
    build: Callable[[nn.LSTM, BenchConfig, torch.device], nn.Module]
    unsupported: Callable[[BenchConfig, torch.device], str | None] = lambda config, device: None
    unavailable: Callable[[], str | None] = lambda: None


def _flashrnn_unavailable() -> str | None:
    if importlib.util.find_spec("flashrnn") is None:
        return (
            f"flashrnn is not installed (pip install flashrnn=={FLASHRNN_VERSION}; a GPU machine without an index "
            "installs bench/wheels/, see bench/README.md)"
        )
    return None


def _triton_provider(kernel: str) -> Provider:
    def build(reference: nn.LSTM, config: BenchConfig, device: torch.device) -> nn.Module:
        module = triton_lstm.LSTM.from_torch(reference, kernel=kernel)
        module.variant = _resolved_kernel(kernel, config, device)
        return module

    return Provider(f"{OURS_PREFIX}{kernel}", f"triton_lstm.LSTM(kernel={kernel!r})", build)


def _resolved_kernel(kernel: str, config: BenchConfig, device: torch.device) -> str:
    """The kernel triton_lstm runs for ``kernel`` on this configuration (what ``auto`` picks), or ``kernel`` itself
    where the library cannot say."""
    try:
        from triton_lstm.functional import resolve_kernel

        sizes = (config.hidden_size, config.output_size, config.batch, config.num_directions, config.torch_dtype)
        return resolve_kernel(kernel, device, sizes) or "torch"
    except Exception:  # the kernel cannot run here (the row will say why), or the function changed
        return kernel


def duplicate_of(name: str, config: BenchConfig, device: torch.device, names) -> str | None:
    """The provider among ``names`` that runs the same kernel as ``name`` on this configuration (``triton_auto``
    where it picks a kernel measured on its own), or None: its rows would time the same code twice."""
    if not is_ours(name):
        return None
    kernel = name.removeprefix(OURS_PREFIX)
    resolved = _resolved_kernel(kernel, config, device)
    twin = f"{OURS_PREFIX}{resolved}"
    return twin if resolved != kernel and twin in names else None


def _build_torch(reference: nn.LSTM, config: BenchConfig, device: torch.device) -> nn.Module:
    reference.variant = "cudnn" if device.type == "cuda" and torch.backends.cudnn.is_available() else "native"
    return reference


PROVIDERS: dict[str, Provider] = {
    provider.name: provider
    for provider in (
        Provider(TORCH, "torch.nn.LSTM (cuDNN on a GPU)", _build_torch),
        *(_triton_provider(kernel) for kernel in KERNELS),
        Provider(
            COMPILED_CELL,
            "the cell's math under torch.compile, called in a Python loop over time steps",
            lambda reference, config, device: CompiledCellLSTM(reference, compile_backend(device)),
        ),
        Provider(
            FLASHRNN,
            f"FlashRNN {FLASHRNN_VERSION} (NX-AI), its fastest backend that runs the configuration",
            lambda reference, config, device: FlashRNNLSTM(reference, flashrnn_backends(config, device)),
            unsupported=lambda config, device: flashrnn_unsupported(config),
            unavailable=_flashrnn_unavailable,
        ),
        Provider(NAIVE, "an eager PyTorch loop over time steps (the baseline)", lambda r, c, d: NaiveLSTM(r)),
    )
}


def provider_names() -> tuple[str, ...]:
    """Every provider, torch first (ratios are measured against it) and the baseline last."""
    return tuple(PROVIDERS)


def build_provider(name: str, reference: nn.LSTM, config: BenchConfig | None = None, device=None) -> nn.Module:
    """The module ``name`` runs, with ``reference``'s weights (shared, or copied by Triton's)."""
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}; choose from {', '.join(provider_names())}")
    device = device if device is not None else reference.weight_ih_l0.device
    return PROVIDERS[name].build(reference, config, device)


def skip_reason(name: str, config: BenchConfig, device: torch.device) -> str | None:
    """Why provider ``name`` does not run ``config`` on ``device`` (not installed, unsupported, or not compiled in
    a warm-up that BENCH_REQUIRE_WARM asks for), or None."""
    provider = PROVIDERS[name]
    reason = provider.unavailable() or provider.unsupported(config, device)
    if reason is None and not warmed(name, config):
        reason = "not compiled in the warm-up phase (BENCH_REQUIRE_WARM), so not timed within this run's budget"
    return reason


# ---------------------------------------------------------------------------------------------------------------
# Warm-up markers: gpu_check.sh compiles in parallel processes first (``python -m bench --compile-only``), which
# leave a marker per (provider, configuration) built; a timed sweep with BENCH_REQUIRE_WARM=a,b skips those
# providers' configurations without a marker instead of compiling them inside its time budget.


def warm_key(config: BenchConfig) -> str:
    """A configuration's id without its sequence length: what a provider's compiled code depends on."""
    return config.id.replace(f"-T{config.seq_len}-", "-")


def _warm_dir() -> Path | None:
    path = os.environ.get("BENCH_WARM_DIR")
    return Path(path) if path else None


def mark_warm(provider: str, config: BenchConfig) -> None:
    """Record that ``provider`` compiled ``config`` (only when BENCH_WARM_DIR is set)."""
    directory = _warm_dir()
    if directory is not None:
        (directory / provider).mkdir(parents=True, exist_ok=True)
        (directory / provider / warm_key(config)).touch()


def warmed(provider: str, config: BenchConfig) -> bool:
    """False only when BENCH_REQUIRE_WARM names ``provider`` and no marker says it compiled ``config``."""
    required = {name for name in os.environ.get("BENCH_REQUIRE_WARM", "").split(",") if name}
    if provider not in required:
        return True
    directory = _warm_dir()
    return directory is not None and (directory / provider / warm_key(config)).exists()


# ---------------------------------------------------------------------------------------------------------------
# Weights, inputs and the timed call.


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
