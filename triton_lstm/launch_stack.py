"""Host launchers of a one-direction LSTM stack in one persistent launch per pass: the layers run as a wavefront.

Layer l at time t needs only layer l at t - 1 and layer l - 1 at t, so with every layer's programs resident at once,
layer l runs time step s - l at wavefront step s: L layers take T + L - 1 steps of one barrier each (two with a
projection), where layer after layer would take L x T. The grid is (batch tiles, P, L): the persistent kernels with
their third axis over layers (``LAYERS``), the layers' state buffers laid out as (slot, L, B, N) as a layer's
directions are. Layer 0's input projection is one GEMM before the launch; the layers above multiply their input, the
output of the layer below (through its dropout mask in training), inside the kernel, with their W_ih slice resident
like W_hh where it fits. Two directions cannot run this way (layer l + 1 at time t needs layer l's reverse direction
at t, computed last): they run layer by layer.
"""

import torch

from triton_lstm import launch, launch_persistent, precision, tuning
from triton_lstm.launch_persistent import Plan


def plan(hidden: int, h_out: int, batch: int, num_layers: int, dtype: torch.dtype, device,
         *, backward: bool = False) -> Plan | str:  # fmt: skip
    """Tiles and grid of a stacked launch of ``num_layers`` layers, or a string saying why it cannot run."""
    return launch_persistent.plan(hidden, h_out, batch, num_layers, dtype, device, backward=backward, layers=num_layers)


def stack_forward(x, h0, c0, w_ih0, w_ih_rest, w_hh, bias, w_hr, masks, lengths=None, *, save: bool,
                  plan: Plan | None = None):  # fmt: skip
    """Run every layer of a one-direction stack in one launch.

    x: (T, B, I); h0: (L, B, H_out); c0: (L, B, H); w_ih0: (4H, I), layer 0's input weights; w_ih_rest:
    (L - 1, 4H, H_out), those of the layers above; w_hh: (L, 4H, H_out); bias: (L, 4H) in the accumulator dtype, or
    None; w_hr: (L, H_out, H) or None; masks: (L - 1, T, B, H_out) in x's dtype, the dropout scale of each layer's
    output but the last (drawn as torch draws them), or None; lengths as in ``launch``. Returns the last layer's
    output (T, B, H_out), h_n (L, B, H_out), c_n (L, B, H) in x's dtype, and a ForwardSaved (its direction axis is
    the layer axis) when ``save``.
    """
    seq_len, batch, _ = x.shape
    num_layers, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4
    buffers = launch.prepare_forward(x, h0, c0, w_ih0.unsqueeze(0), bias, hidden, save=save)
    if batch > 0:
        tiles = plan or _planned(hidden, h_out, batch, num_layers, x.dtype, x.device, backward=False)
        unprojected = (
            torch.empty(num_layers, batch, hidden, dtype=x.dtype, device=x.device) if w_hr is not None else None
        )
        grid = (tiles.batch_tiles, tiles.programs, num_layers)
        phases = (seq_len + num_layers - 1) * (2 if w_hr is not None else 1)
        for begin, end in launch_persistent.phase_ranges(phases, tiles):
            sync = torch.zeros(tiles.batch_tiles, dtype=torch.int32, device=x.device)
            tuning.persistent_forward_kernel[grid](
                buffers.x_proj, buffers.bias if buffers.bias is not None else buffers.cs, w_hh.contiguous(),
                w_hr.contiguous() if w_hr is not None else w_hh, w_ih_rest.contiguous(),
                masks if masks is not None else buffers.hs, buffers.hs,
                unprojected if unprojected is not None else buffers.hs, buffers.cs, buffers.gates,
                lengths if lengths is not None else sync, sync,
                begin, end, seq_len, batch, buffers.x_proj.stride(0), buffers.x_proj.stride(1),
                HIDDEN=hidden, H_OUT=h_out, HAS_BIAS=buffers.bias is not None, HAS_PROJ=w_hr is not None,
                HAS_LENGTHS=lengths is not None, SAVE=save, GRID_SYNC=launch_persistent.grid_sync(tiles, num_layers),
                UPCAST=launch.upcast_dot(x.dtype), TF32=precision.use_tf32(x.dtype, x.device), LAYERS=num_layers,
                DROPOUT=masks is not None, **tiles.meta(backward=False), **launch_persistent.launch_options(tiles),
            )  # fmt: skip
    _, h_n, c_n, saved = launch.finish_forward(buffers, lengths, x.dtype)
    return buffers.hs[1:, -1], h_n, c_n, saved


def stack_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih0, w_ih_rest, w_hh, w_hr, masks,
                   saved: launch.ForwardSaved, lengths=None, *, plan: Plan | None = None):  # fmt: skip
    """Gradients of a one-direction stack, every layer's recurrence in one launch (a wavefront in reverse).

    grad_output: (T, B, H_out), of the last layer's output; grad_h_n: (L, B, H_out); grad_c_n: (L, B, H); the rest as
    in ``stack_forward``. Returns (d_x, d_h0, d_c0, d_w_ih0, d_w_ih_rest, d_w_hh, d_bias, d_w_hr) in the accumulator
    dtype, d_bias (L, 4H) standing for both biases, d_w_hr None without projection.
    """
    seq_len, batch, _ = x.shape
    num_layers, four_hidden, h_out = w_hh.shape
    hidden = four_hidden // 4
    acc_dtype = launch.accumulator_dtype(x.dtype)
    device = x.device
    # dL/dh_t of every layer from outside the stack: the output's for the last layer, h_n's at each row's last step.
    d_hs = torch.zeros(seq_len, num_layers, batch, h_out, dtype=acc_dtype, device=device)
    d_hs[:, -1] = grad_output
    last, rows = launch.last_steps(lengths, seq_len, batch, device)
    d_hs[last, :, rows] += grad_h_n.transpose(0, 1).to(acc_dtype)
    d_gates = torch.empty(seq_len, num_layers, batch, four_hidden, dtype=acc_dtype, device=device)
    d_cs = torch.empty(2, num_layers, batch, hidden, dtype=acc_dtype, device=device)
    d_cs[0] = grad_c_n
    if batch == 0:
        d_h0 = torch.zeros(num_layers, batch, h_out, dtype=acc_dtype, device=device)
    else:
        tiles = plan or _planned(hidden, h_out, batch, num_layers, x.dtype, device, backward=True)
        partials = torch.empty(2, tiles.programs, num_layers, batch, h_out, dtype=acc_dtype, device=device)
        # The layer below reads a layer's shares of dL/dx one wavefront step after they were written: two slots,
        # except where the interpreter finishes the layer before the one below starts.
        ih_slots = seq_len if tuning.INTERPRETED and not tiles.stepped else 2
        ih_partials = torch.empty(ih_slots, tiles.programs, num_layers, batch, h_out, dtype=acc_dtype, device=device)
        grid = (tiles.batch_tiles, tiles.programs, num_layers)
        phases = (seq_len + num_layers - 1) * (2 if w_hr is not None else 1)
        for begin, end in launch_persistent.phase_ranges(phases, tiles):
            sync = torch.zeros(tiles.batch_tiles, dtype=torch.int32, device=device)
            tuning.persistent_backward_kernel[grid](
                saved.gates, saved.cs, w_hh.contiguous(), w_hr.contiguous() if w_hr is not None else w_hh,
                w_ih_rest.contiguous(), masks if masks is not None else d_hs, d_hs, d_gates, d_cs, partials,
                ih_partials, lengths if lengths is not None else sync, sync, begin, end, seq_len, batch, ih_slots,
                HIDDEN=hidden, H_OUT=h_out, HAS_PROJ=w_hr is not None, HAS_LENGTHS=lengths is not None,
                GRID_SYNC=launch_persistent.grid_sync(tiles, num_layers), UPCAST=launch.upcast_dot(x.dtype),
                TF32=precision.use_tf32(x.dtype, device), LAYERS=num_layers, DROPOUT=masks is not None,
                **tiles.meta(backward=True), **launch_persistent.launch_options(tiles),
            )  # fmt: skip
        # Each layer's step 0 left its partial products of dL/dh0 in slot 0.
        d_h0 = partials[0].sum(dim=0)
    d_w_hh, d_bias, d_w_hr = launch.recurrent_weight_gradients(d_gates, d_hs, w_hr, saved)
    # Each layer's input: x for the first; the output of the layer below, through its dropout mask, for the others.
    layer_inputs = saved.hs[1:, :-1]
    if masks is not None:
        layer_inputs = layer_inputs * masks.transpose(0, 1)  # in the input dtype, as torch applies dropout
    layer_inputs = layer_inputs.to(acc_dtype)
    d_w_ih_rest = torch.bmm(launch.step_rows(d_gates[:, 1:]).transpose(1, 2), launch.step_rows(layer_inputs))
    d_gates_first = d_gates[:, 0].reshape(seq_len * batch, four_hidden)
    input_size = x.shape[-1]
    d_w_ih0 = d_gates_first.t() @ x.reshape(seq_len * batch, input_size).to(acc_dtype)
    d_x = (d_gates_first @ w_ih0.to(acc_dtype)).view(seq_len, batch, input_size)
    return d_x, d_h0, d_cs[seq_len % 2], d_w_ih0, d_w_ih_rest, d_w_hh, d_bias, d_w_hr


def _planned(hidden, h_out, batch, num_layers, dtype, device, *, backward: bool) -> Plan:
    planned = plan(hidden, h_out, batch, num_layers, dtype, device, backward=backward)
    if isinstance(planned, str):
        raise RuntimeError(f"triton_lstm: the stacked persistent launch cannot run this configuration: {planned}")
    return planned
