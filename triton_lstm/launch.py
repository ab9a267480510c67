"""Host launchers of the per-step kernels: check, allocate, pick the grid, launch once per time step.

Every launch of a call gets the same arguments (whole buffers) but the step index, from which the kernels compute
their offsets: the loop between launches runs no torch op (``fast_launch`` launches; ``graphs`` may replay the
loop as a CUDA graph). What the shared helpers (``prepare_forward``, ``finish_forward``, ``prepare_backward``,
``weight_gradients``) compute once per call is the fixed cost of a call.

Layout conventions for one layer with D directions (D = 2 when bidirectional):
- Stacked weights: w_ih (D, 4H, I), w_hh (D, 4H, H_out), bias (D, 4H) = b_ih + b_hh, w_hr (D, H_out, H).
- Per-step buffers are kept in *step order*: index s holds time s for the forward direction and time T - 1 - s for
  the reverse one, so every step reads and writes one contiguous (D, B, ...) slot for both directions.
- The cell state, saved gates and every gradient buffer use the accumulator dtype: float32, or float64 for float64.
- Variable lengths: ``lengths`` (B,) int32 on the device, or None when every row has T steps. A row's reverse
  direction starts at its own end; h_n and c_n hold each row's state after its own last step.
"""

import contextlib
from dataclasses import dataclass

import torch
import triton

from triton_lstm import fast_launch, graphs, precision, tuning


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the cell state and of every sum: float64 stays float64, the rest accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast_dot(dtype: torch.dtype) -> bool:
    # The interpreter's bf16 tl.dot multiplies raw bit patterns; on the GPU bf16 keeps its tensor-core path.
    return tuning.INTERPRETED and dtype == torch.bfloat16


@dataclass
class ForwardSaved:
    """What the backward of one layer needs, in step order. Slot 0 of hs and cs holds h0 and c0, slot s + 1 the
    state after step s, so slot s is always the state a step starts from."""

    hs: torch.Tensor  # (T + 1, D, B, H_out), input dtype
    gates: torch.Tensor  # (T, D, B, 4H), accumulator dtype: i, f, g, o after activation
    cs: torch.Tensor  # (T + 1, D, B, H), accumulator dtype


def _reverse_in_time(seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each row's first len_b steps along dim 0 of seq (T, B, N); steps past a row's length stay put.

    The map is its own inverse, so it converts the reverse direction both ways between time and step order.
    """
    if lengths is None:
        return seq.flip(0)
    steps = torch.arange(seq.shape[0], device=seq.device)[:, None]
    lengths = lengths.long()[None, :]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return seq.gather(0, index[:, :, None].expand_as(seq))


def to_step_order(seq: torch.Tensor, num_directions: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(T, B, D * N) in time order -> (T, D, B, N) in step order (the reverse direction's time reversed)."""
    seq_len, batch, width = seq.shape
    per_direction = seq.view(seq_len, batch, num_directions, width // num_directions).permute(0, 2, 1, 3)
    if num_directions == 1:
        return per_direction
    return torch.stack((per_direction[:, 0], _reverse_in_time(per_direction[:, 1], lengths)), dim=1)


def from_step_order(steps: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(T, D, B, N) in step order -> (T, B, D * N) in time order."""
    seq_len, num_directions, batch, width = steps.shape
    if num_directions == 1:
        return steps.view(seq_len, batch, width)
    return torch.cat((steps[:, 0], _reverse_in_time(steps[:, 1], lengths)), dim=-1)


def last_steps(lengths: torch.Tensor | None, seq_len: int, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(step, row) index pairs of each row's last step, for gathering h_n and scattering its gradient."""
    rows = torch.arange(batch, device=device)
    last = lengths.long() - 1 if lengths is not None else torch.full_like(rows, seq_len - 1)
    return last, rows


@dataclass
class ForwardBuffers:
    """Everything a forward launch reads and writes besides the weights (see ForwardSaved for the slot layout).

    Without ``save`` the cell state has only two slots, used alternately (step s reads s % 2 and writes
    (s + 1) % 2), and no gates are kept: inference memory does not grow with T beyond the output.
    """

    x_proj: torch.Tensor  # (T, B, D * 4H), input dtype
    bias: torch.Tensor | None  # (D, 4H), accumulator dtype
    hs: torch.Tensor  # (T + 1, D, B, H_out)
    cs: torch.Tensor  # (T + 1, D, B, H), or (2, D, B, H) without save
    gates: torch.Tensor  # (T, D, B, 4H); a never-written stand-in without save
    save: bool

    def c_slot(self, step: int) -> int:
        """Slot of the cell state that ``step`` starts from."""
        return step if self.save else step % 2


def allocate_forward(seq_len, batch, num_directions, input_size, hidden, h_out, dtype, device, *, bias: bool,
                     save: bool, projected: int | None = None) -> ForwardBuffers:  # fmt: skip
    """Uninitialised buffers of one forward call (``prepare_forward`` fills them). ``projected``: the directions whose
    input projection x_proj holds, when not all (a stack's layers take the directions' place, and only layer 0's input
    is projected before its launch)."""
    acc_dtype = accumulator_dtype(dtype)

    def empty(*shape, dtype=acc_dtype):
        return torch.empty(*shape, dtype=dtype, device=device)

    return ForwardBuffers(
        x_proj=empty(seq_len, batch, (projected or num_directions) * 4 * hidden, dtype=dtype),
        bias=empty(num_directions, 4 * hidden) if bias else None,
        hs=empty(seq_len + 1, num_directions, batch, h_out, dtype=dtype),
        cs=empty(seq_len + 1 if save else 2, num_directions, batch, hidden),
        gates=empty(seq_len if save else 1, num_directions, batch, 4 * hidden),
        save=save,
    )


def prepare_forward(x, h0, c0, w_ih, bias, hidden: int, *, save: bool, into: ForwardBuffers | None = None):
    """The input projection of every step (one GEMM for all directions) and the state buffers: new ones, or
    ``into`` (buffers of the same sizes, e.g. a CUDA graph's static ones) filled in place."""
    seq_len, batch, input_size = x.shape
    num_directions, _, h_out = h0.shape
    if into is None:
        into = allocate_forward(seq_len, batch, num_directions, input_size, hidden, h_out, x.dtype, x.device,
                                bias=bias is not None, save=save, projected=w_ih.shape[0])  # fmt: skip
    torch.matmul(x.reshape(seq_len * batch, input_size), w_ih.reshape(-1, input_size).t(),
                 out=into.x_proj.view(seq_len * batch, into.x_proj.shape[-1]))  # fmt: skip
    into.hs[0].copy_(h0)
    into.cs[0].copy_(c0)
    if bias is not None:
        into.bias.copy_(bias)
    return into


def finish_forward(buffers: ForwardBuffers, lengths, dtype):
    """Output in time order, h_n and c_n at each row's last step, and what backward needs."""
    hs = buffers.hs
    seq_len, batch = hs.shape[0] - 1, hs.shape[2]
    output = from_step_order(hs[1:], lengths)
    if lengths is None:
        h_n = hs[seq_len].clone()  # a copy: a view would keep (and make the custom op clone) all of hs
    else:
        last, rows = last_steps(lengths, seq_len, batch, hs.device)
        h_n = hs[last + 1, :, rows].transpose(0, 1).contiguous()
    # Rows past their length kept their cell state, so the final slot holds every row's own last c.
    c_n = buffers.cs[buffers.c_slot(seq_len)].to(dtype, copy=True)
    saved = ForwardSaved(hs=hs, gates=buffers.gates, cs=buffers.cs) if buffers.save else None
    return output, h_n, c_n, saved


@dataclass
class _ForwardLoop:
    """Every tensor the per-step forward kernel touches in one call (its launches differ only in the step)."""

    buffers: ForwardBuffers
    w_hh: torch.Tensor  # (D, 4H, H_out), contiguous
    w_hr: torch.Tensor | None  # (D, H_out, H), contiguous
    ms: torch.Tensor | None  # (2, D, B, H), input dtype: o * tanh(c) of the last two steps, with a projection
    lengths: torch.Tensor | None

    def run(self, config: dict | None) -> None:
        """Launch the kernel for every step, then project the last step's m into hs[T]."""
        b = self.buffers
        seq_len, num_directions, batch, h_out = b.hs.shape
        seq_len -= 1
        hidden = b.cs.shape[-1]
        if seq_len == 0 or batch == 0:
            return
        args = [b.x_proj, b.bias if b.bias is not None else b.cs, self.w_hh,
                self.w_hr if self.w_hr is not None else self.w_hh, b.hs, self.ms if self.ms is not None else b.hs,
                b.cs, b.gates, self.lengths if self.lengths is not None else b.cs, 0, seq_len, batch]  # fmt: skip
        meta = {"HIDDEN": hidden, "H_OUT": h_out, "HAS_BIAS": b.bias is not None, "HAS_PROJ": self.w_hr is not None,
                "HAS_LENGTHS": self.lengths is not None, "SAVE": b.save, "UPCAST": upcast_dot(b.hs.dtype),
                "TF32": precision.use_tf32(b.hs.dtype, b.hs.device),
                **(config or {})}  # fmt: skip

        def grid(m):
            return triton.cdiv(batch, m["BLOCK_B"]), triton.cdiv(hidden, m["BLOCK_H"]), num_directions

        name = "step_forward_kernel" if config is None else "lstm_step_forward_kernel"
        launcher = fast_launch.StepLauncher(name, getattr(tuning, name), grid, args, 9, "step", meta)
        launcher.run(range(seq_len))
        if self.w_hr is not None:
            torch.bmm(self.ms[(seq_len - 1) % 2], self.w_hr.transpose(1, 2), out=b.hs[seq_len])


def _forward_bytes(seq_len, batch, num_directions, hidden, h_out, dtype, save: bool) -> int:
    """Bytes of one forward call's buffers (what a CUDA graph of it keeps)."""
    size, acc_size = torch.finfo(dtype).bits // 8, torch.finfo(accumulator_dtype(dtype)).bits // 8
    rows = num_directions * batch
    per_step = rows * (4 * hidden * size + h_out * size + (hidden + 4 * hidden) * acc_size * save)
    weights = num_directions * 4 * hidden * h_out * size * 2
    return (seq_len + 2) * per_step + 4 * rows * hidden * acc_size + weights


def _like(t: torch.Tensor | None) -> torch.Tensor | None:
    """An uninitialised contiguous buffer shaped like ``t`` (a CUDA graph's static copy of it)."""
    return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else None


def _copy_into(statics, givens) -> None:
    for static, given in zip(statics, givens, strict=True):
        if static is not None:
            static.copy_(given)


def _own(tensors, static) -> list:
    """Each tensor, cloned when it shares memory with one of the ``static`` buffers (of a CUDA graph)."""
    taken = {t.untyped_storage().data_ptr() for t in static if t is not None}
    return [t.clone() if t is not None and t.untyped_storage().data_ptr() in taken else t for t in tensors]


def step_forward(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths=None, *, save: bool, config: dict | None = None):
    """Run one layer (all its directions) over the whole sequence, one kernel launch per step.

    x: (T, B, I); h0: (D, B, H_out); c0: (D, B, H); weights stacked as in the module docstring; bias may be None
    and w_hr is None without projection; lengths as in the module docstring. ``config`` replaces autotuning with
    fixed meta-parameters (tests).
    Returns output (T, B, D * H_out), h_n (D, B, H_out), c_n (D, B, H) in x's dtype, and a ForwardSaved when
    ``save`` (else None).

    Between launches nothing runs on the host but the launch itself (``fast_launch``); with CUDA graphs on, the
    whole loop is one graph replay (``graphs``).
    """
    seq_len, batch, input_size = x.shape
    num_directions, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4

    def ms():
        if w_hr is None:
            return None
        return torch.empty(2, num_directions, batch, hidden, dtype=x.dtype, device=x.device)

    tf32 = precision.use_tf32(x.dtype, x.device)
    key = ("step_forward", seq_len, batch, hidden, h_out, num_directions, x.dtype, tf32,
           bias is not None, w_hr is not None, lengths is not None, save,
           tuple(sorted((config or {}).items())))  # fmt: skip
    graph = graphs.lookup(key, x, _forward_bytes(seq_len, batch, num_directions, hidden, h_out, x.dtype, save))
    if graph is None:
        buffers = prepare_forward(x, h0, c0, w_ih, bias, hidden, save=save)
        contiguous_w_hr = w_hr.contiguous() if w_hr is not None else None
        _ForwardLoop(buffers, w_hh.contiguous(), contiguous_w_hr, ms(), lengths).run(config)
        return finish_forward(buffers, lengths, x.dtype)

    with graph:
        loop = graph.static
        if loop is None:
            buffers = allocate_forward(seq_len, batch, num_directions, input_size, hidden, h_out, x.dtype, x.device,
                                       bias=bias is not None, save=save)  # fmt: skip
            loop = graph.static = _ForwardLoop(buffers, _like(w_hh), _like(w_hr), ms(), _like(lengths))
        prepare_forward(x, h0, c0, w_ih, bias, hidden, save=save, into=loop.buffers)
        _copy_into((loop.w_hh, loop.w_hr, loop.lengths), (w_hh, w_hr, lengths))
        graph.run(lambda: loop.run(config), {"step_forward_kernel": seq_len})
        output, h_n, c_n, saved = finish_forward(loop.buffers, lengths, x.dtype)
        static = (loop.buffers.hs, loop.buffers.cs, loop.buffers.gates)
        output, h_n, c_n = _own((output, h_n, c_n), static)
        if saved is not None:
            saved = ForwardSaved(*_own((saved.hs, saved.gates, saved.cs), static))
    return output, h_n, c_n, saved


def prepare_backward(grad_output, grad_h_n, lengths, hidden: int, *, into: tuple | None = None):
    """Upstream gradient of every step's h in step order, (T, D, B, H_out) in the accumulator dtype: the output's,
    plus h_n's at each row's last step; and the buffer of gate gradients (T, D, B, 4H). ``into``: the two buffers
    to use instead of new ones (the first is filled)."""
    seq_len, batch, _ = grad_output.shape
    num_directions, _, h_out = grad_h_n.shape
    acc_dtype = accumulator_dtype(grad_output.dtype)
    device = grad_output.device
    if into is None:
        into = (torch.empty(seq_len, num_directions, batch, h_out, dtype=acc_dtype, device=device),
                torch.empty(seq_len, num_directions, batch, 4 * hidden, dtype=acc_dtype, device=device))  # fmt: skip
    d_out_steps, d_gates = into
    d_out_steps.copy_(to_step_order(grad_output, num_directions, lengths))
    if lengths is None:
        d_out_steps[seq_len - 1] += grad_h_n
    else:
        last, rows = last_steps(lengths, seq_len, batch, device)
        d_out_steps[last, :, rows] += grad_h_n.transpose(0, 1).to(acc_dtype)
    return d_out_steps, d_gates


def step_rows(steps: torch.Tensor) -> torch.Tensor:
    """(T, D, B, N) -> (D, T * B, N): every step's rows of each direction (or layer), for GEMMs over all steps."""
    seq_len, num_directions, batch, width = steps.shape
    return steps.transpose(0, 1).reshape(num_directions, seq_len * batch, width)


def recurrent_weight_gradients(d_gates, d_hs, w_hr, saved: ForwardSaved):
    """Gradients of W_hh, of the bias and of W_hr as GEMMs over all steps, per direction (or stacked layer).

    d_gates: (T, D, B, 4H) gate pre-activation gradients in step order; d_hs: (T, D, B, H_out) dL/dh_t of every step
    (only read with a projection). Returns (d_w_hh, d_bias, d_w_hr) in the accumulator dtype, d_w_hr None without
    projection.
    """
    hidden = d_gates.shape[-1] // 4
    d_gates_rows = step_rows(d_gates)
    d_w_hh = torch.bmm(d_gates_rows.transpose(1, 2), step_rows(saved.hs[:-1].to(d_gates.dtype)))
    d_bias = d_gates_rows.sum(dim=1)
    d_w_hr = None
    if w_hr is not None:
        # h_t = W_hr m_t with m_t = o_t * tanh(c_t), recomputed from the saved gates and cell states.
        unprojected = saved.gates[..., 3 * hidden :] * torch.tanh(saved.cs[1:])
        d_w_hr = torch.bmm(step_rows(d_hs).transpose(1, 2), step_rows(unprojected))
    return d_w_hh, d_bias, d_w_hr


def weight_gradients(d_gates, d_hs, x, w_ih, w_hr, saved: ForwardSaved, lengths):
    """Input and weight gradients as GEMMs over all T * B rows at once, per direction.

    d_gates: (T, D, B, 4H) gate pre-activation gradients in step order; d_hs: (T, D, B, H_out) dL/dh_t of every
    step (only read with a projection). Returns (d_x, d_w_ih, d_w_hh, d_bias, d_w_hr) in the accumulator dtype,
    d_w_hr None without projection.
    """
    seq_len, num_directions, batch, four_hidden = d_gates.shape
    acc_dtype = d_gates.dtype
    rows = seq_len * batch
    d_w_hh, d_bias, d_w_hr = recurrent_weight_gradients(d_gates, d_hs, w_hr, saved)

    d_gates_time = from_step_order(d_gates, lengths).reshape(rows, num_directions * four_hidden)  # matches x
    input_size = x.shape[-1]
    x_rows = x.reshape(rows, input_size).to(acc_dtype)
    d_w_ih = torch.matmul(d_gates_time.t(), x_rows).view(num_directions, four_hidden, input_size)
    d_x = torch.matmul(d_gates_time, w_ih.reshape(num_directions * four_hidden, input_size).to(acc_dtype))
    return d_x.view(seq_len, batch, input_size), d_w_ih, d_w_hh, d_bias, d_w_hr


@dataclass
class _BackwardLoop:
    """Every tensor the per-step backward kernel touches in one call (its launches differ only in the step)."""

    gates: torch.Tensor  # (T, D, B, 4H), saved by the forward
    cs: torch.Tensor  # (T + 1, D, B, H), saved by the forward
    w_hh: torch.Tensor  # (D, 4H, H_out), contiguous
    w_hr: torch.Tensor | None  # (D, H_out, H), contiguous
    d_hs: torch.Tensor  # (T + 1, D, B, H_out): slot s + 1 = dL/dh_s, slot 0 = dL/dh0 (see the kernel)
    d_cs: torch.Tensor  # (2, D, B, H): dL/dc, alternating
    d_gates: torch.Tensor  # (T, D, B, 4H)
    lengths: torch.Tensor | None

    def run(self, config: dict | None) -> None:
        """Launch the kernel for every step, last to first."""
        seq_len, num_directions, batch, h_out = self.d_hs.shape
        seq_len -= 1
        hidden = self.d_cs.shape[-1]
        if seq_len == 0 or batch == 0:
            return
        args = [self.gates, self.cs, self.w_hh, self.w_hr if self.w_hr is not None else self.w_hh, self.d_hs,
                self.d_cs, self.d_gates, self.lengths if self.lengths is not None else self.d_cs, 0, batch]  # fmt: skip
        meta = {"HIDDEN": hidden, "H_OUT": h_out, "HAS_PROJ": self.w_hr is not None,
                "HAS_LENGTHS": self.lengths is not None, "TF32": precision.use_tf32(self.w_hh.dtype, self.w_hh.device),
                **(config or {})}  # fmt: skip

        def grid(m):
            return triton.cdiv(batch, m["BLOCK_B"]), triton.cdiv(h_out, m["BLOCK_N"]), num_directions

        name = "step_backward_kernel" if config is None else "lstm_step_backward_kernel"
        launcher = fast_launch.StepLauncher(name, getattr(tuning, name), grid, args, 8, "step", meta)
        launcher.run(range(seq_len - 1, -1, -1))


def _backward_bytes(seq_len, batch, num_directions, hidden, h_out, dtype) -> int:
    """Bytes of one backward call's buffers (what a CUDA graph of it keeps)."""
    size, acc_size = torch.finfo(dtype).bits // 8, torch.finfo(accumulator_dtype(dtype)).bits // 8
    rows = num_directions * batch
    per_step = rows * acc_size * (4 * hidden * 2 + hidden + h_out)
    weights = num_directions * 4 * hidden * h_out * size * 2
    return (seq_len + 1) * per_step + 2 * rows * hidden * acc_size + weights


def step_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, saved: ForwardSaved, lengths=None,
                  *, config: dict | None = None):  # fmt: skip
    """Gradients of one layer: the recurrence runs backwards one kernel launch per step, then the weight
    gradients are GEMMs over all steps at once.

    grad_output: (T, B, D * H_out); grad_h_n: (D, B, H_out); grad_c_n: (D, B, H); the rest as in ``step_forward``.
    Returns (d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, d_w_hr) in the accumulator dtype, d_bias (D, 4H) standing
    for both b_ih and b_hh, and d_w_hr None without projection.
    """
    seq_len, batch, _ = x.shape
    num_directions, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4
    acc_dtype = accumulator_dtype(x.dtype)

    def gradient_buffers():
        def empty(*shape):
            return torch.empty(*shape, dtype=acc_dtype, device=x.device)

        return (empty(seq_len + 1, num_directions, batch, h_out), empty(2, num_directions, batch, hidden),
                empty(seq_len, num_directions, batch, 4 * hidden))  # fmt: skip

    tf32 = precision.use_tf32(x.dtype, x.device)
    key = ("step_backward", seq_len, batch, hidden, h_out, num_directions, x.dtype, tf32, w_hr is not None,
           lengths is not None, tuple(sorted((config or {}).items())))  # fmt: skip
    graph = graphs.lookup(key, x, _backward_bytes(seq_len, batch, num_directions, hidden, h_out, x.dtype))
    with graph if graph is not None else contextlib.nullcontext():
        if graph is None:
            contiguous_w_hr = w_hr.contiguous() if w_hr is not None else None
            loop = _BackwardLoop(saved.gates, saved.cs, w_hh.contiguous(), contiguous_w_hr, *gradient_buffers(),
                                 lengths)  # fmt: skip
        else:
            loop = graph.static
            if loop is None:
                loop = graph.static = _BackwardLoop(_like(saved.gates), _like(saved.cs), _like(w_hh), _like(w_hr),
                                                    *gradient_buffers(), _like(lengths))  # fmt: skip
            _copy_into((loop.gates, loop.cs, loop.w_hh, loop.w_hr, loop.lengths),
                       (saved.gates, saved.cs, w_hh, w_hr, lengths))  # fmt: skip
        loop.d_hs[0].zero_()
        prepare_backward(grad_output, grad_h_n, lengths, hidden, into=(loop.d_hs[1:], loop.d_gates))
        loop.d_cs[seq_len % 2].copy_(grad_c_n)
        if graph is None:
            loop.run(config)
        else:
            graph.run(lambda: loop.run(config), {"step_backward_kernel": seq_len})
        # Copies: d_h0 alone rather than the whole d_hs it is a slot of, and nothing a later replay overwrites.
        d_h0, d_c0 = loop.d_hs[0].clone(), loop.d_cs[0].clone()
        d_x, d_w_ih, d_w_hh, d_bias, d_w_hr = weight_gradients(loop.d_gates, loop.d_hs[1:], x, w_ih, w_hr, saved,
                                                               lengths)  # fmt: skip
    return d_x, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, d_w_hr
