"""``triton_lstm.LSTM``: an ``nn.Module`` with torch.nn.LSTM's contract whose recurrence runs in Triton.

The module owns the parameters and reproduces torch.nn.LSTM's behaviour around them (constructor checks,
parameter names and initialisation, repr, serialisation, input checks, output layout); the computation is
``triton_lstm.functional.lstm``.
"""

import contextlib
import math
import numbers
import warnings
import weakref
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from triton_lstm import functional, validation


def _init_lstm(
    self,
    mode,
    input_size,
    hidden_size,
    num_layers=1,
    bias=True,
    batch_first=False,
    dropout=0.0,
    bidirectional=False,
    proj_size=0,
    device=None,
    dtype=None,
):
    """Store the configuration, check it, create the parameters and initialise them, as torch does."""
    # Attributes are stored before the checks, and dropout is converted first: float(None) raising its
    # own TypeError is part of torch's behaviour.
    self.mode = mode
    self.input_size = input_size
    self.hidden_size = hidden_size
    self.num_layers = num_layers
    self.bias = bias
    self.batch_first = batch_first
    self.dropout = float(dropout)
    self.bidirectional = bidirectional
    self.proj_size = proj_size

    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=3,
        )
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not isinstance(input_size, int):
        raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if not isinstance(hidden_size, int):
        raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")

    factory = {"device": device, "dtype": dtype}
    directions = 2 if bidirectional else 1
    out_size = proj_size if proj_size > 0 else hidden_size
    names_per_direction = []
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else out_size * directions
        for suffix in ("", "_reverse")[:directions]:
            shapes = {
                "weight_ih": (4 * hidden_size, layer_input),
                "weight_hh": (4 * hidden_size, out_size),
            }
            if bias:
                shapes["bias_ih"] = (4 * hidden_size,)
                shapes["bias_hh"] = (4 * hidden_size,)
            if proj_size > 0:
                shapes["weight_hr"] = (proj_size, hidden_size)
            names = []
            for kind, shape in shapes.items():
                name = f"{kind}_l{layer}{suffix}"
                setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                names.append(name)
            names_per_direction.append(names)

    self._flat_weights_names = [name for names in names_per_direction for name in names]
    self._all_weights = names_per_direction
    self._init_flat_weights()
    self.reset_parameters()


# Python names a function's __qualname__ in its argument errors (missing, unexpected or too many arguments).
# torch.nn.LSTM forwards its arguments to RNNBase.__init__(self, mode, ...), so those errors read
# "RNNBase.__init__() ..."; the same name and the same parameters give the same messages.
_init_lstm.__qualname__ = "RNNBase.__init__"


class LSTM(nn.Module):
    r"""A multi-layer LSTM with the interface and behaviour of ``torch.nn.LSTM``; the recurrence runs in Triton.

    Arguments are those of ``torch.nn.LSTM``: ``input_size``, ``hidden_size``, ``num_layers=1``, ``bias=True``,
    ``batch_first=False``, ``dropout=0.0``, ``bidirectional=False``, ``proj_size=0``, ``device=None``,
    ``dtype=None``, plus the keyword ``kernel``: which kernel runs the recurrence, one of
    ``triton_lstm.functional.KERNELS``; ``"auto"`` lets ``triton_lstm.functional`` choose (and fall back to
    torch's own LSTM where Triton cannot run).

    With D = 2 if bidirectional else 1, H = hidden_size and H_out = proj_size or hidden_size:

    - input: (T, B, input_size), (B, T, input_size) when ``batch_first``, or (T, input_size) unbatched.
    - hx: optional pair (h_0 (D*num_layers, B, H_out), c_0 (D*num_layers, B, H)), without B for unbatched
      input; zeros when omitted.
    - returns ``output, (h_n, c_n)``: output (T, B, D*H_out), or (B, T, D*H_out) when ``batch_first`` (a
      transposed view, as torch returns), or (T, D*H_out) unbatched; h_n and c_n shaped like h_0 and c_0.

    Parameters are named, shaped, ordered and initialised as torch.nn.LSTM's, so state dicts load both ways
    and the same seed gives the same weights.
    """

    __constants__: ClassVar[list[str]] = [
        "mode",
        "input_size",
        "hidden_size",
        "num_layers",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
    ]

    def __init__(self, *args, kernel="auto", **kwargs):
        validation.check_kernel(kernel)
        super().__init__()
        self.kernel = kernel
        _init_lstm(self, "LSTM", *args, **kwargs)

    @classmethod
    def from_torch(cls, module, *, kernel="auto"):
        """Build an ``LSTM`` with the configuration, device, dtype, weights and mode of a ``torch.nn.LSTM``."""
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"from_torch expects a torch.nn.LSTM, got {type(module).__name__}")
        owner = overridden_forward(type(module))
        if owner is not None:
            raise TypeError(
                f"from_torch would drop {owner.__qualname__}.forward: {type(module).__name__} is a subclass of "
                "torch.nn.LSTM with its own forward. triton_lstm.patch() runs it on the Triton kernels and keeps it."
            )
        first = module.weight_ih_l0
        new = meta_twin(cls, module, dtype=first.dtype, kernel=kernel)
        new.to_empty(device=first.device)
        _copy_parameters(module, new)
        return new.train(module.training)

    def to_torch(self):
        """Return a ``torch.nn.LSTM`` with this module's configuration, device, dtype, weights and mode."""
        first = self.weight_ih_l0
        module = meta_twin(nn.LSTM, self, dtype=first.dtype)
        module.to_empty(device=first.device)
        _copy_parameters(self, module)
        return module.train(self.training)

    def _init_flat_weights(self):
        """Point ``_flat_weights`` at the current parameters, and remember them to notice swaps later."""
        self._flat_weights = [getattr(self, name, None) for name in self._flat_weights_names]
        self._flat_weight_refs = [None if w is None else weakref.ref(w) for w in self._flat_weights]

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        # Assigning a weight replaces it in _flat_weights too; after the assignment, so one that
        # nn.Module rejects leaves _flat_weights as it was.
        names = self.__dict__.get("_flat_weights_names", ())
        if name in names:
            self._flat_weights[names.index(name)] = value

    def _weights_have_changed(self):
        """True when a weight is not the object last seen, e.g. inside ``torch.func.functional_call``."""
        refs = self._flat_weight_refs
        if len(refs) != len(self._flat_weights_names):
            return True
        for ref, name in zip(refs, self._flat_weights_names, strict=True):
            seen = None if ref is None else ref()
            if seen is not getattr(self, name, None):
                return True
        return False

    def _update_flat_weights(self):
        if self._weights_have_changed():
            self._init_flat_weights()

    def _apply(self, fn, recurse=True):
        # Tensors cannot be swapped in place (torch.utils.swap_tensors) while weak references to them exist.
        self._flat_weight_refs = []
        result = super()._apply(fn, recurse)
        self._init_flat_weights()
        return result

    def flatten_parameters(self):
        """Do nothing: the kernels read each weight where it is (torch compacts them for cuDNN)."""
        return None

    def reset_parameters(self):
        """Draw every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), in ``parameters()`` order."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    @property
    def all_weights(self):
        """The parameters as one list per (layer, direction), in the order of ``_all_weights``."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self):
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if self.bias is not True:
            text += f", bias={self.bias}"
        if self.batch_first is not False:
            text += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            text += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            text += f", bidirectional={self.bidirectional}"
        if self.kernel != "auto":
            text += f", kernel={self.kernel!r}"
        return text

    def __getstate__(self):
        # Weak references cannot be pickled; __setstate__ makes new ones.
        state = self.__dict__.copy()
        del state["_flat_weight_refs"]
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._init_flat_weights()

    def _replicate_for_data_parallel(self):
        # Replicas get their own lists, so that updating one does not touch the others'.
        replica = super()._replicate_for_data_parallel()
        replica._flat_weights = list(replica._flat_weights)
        replica._flat_weights_names = list(replica._flat_weights_names)
        return replica

    def forward(self, input, hx=None):
        """Run the LSTM over ``input``; see the class docstring for shapes. Returns ``output, (h_n, c_n)``."""
        return lstm_forward(self, input, hx, kernel=self.kernel)


def lstm_forward(module, input, hx, *, kernel):
    """torch.nn.LSTM's forward over the Triton kernels, for ``module``: a ``triton_lstm.LSTM``, or in patch mode a
    ``torch.nn.LSTM`` (subclasses included). Reads the module's configuration, ``training`` and ``_flat_weights``
    (refreshed first, as torch does); ``kernel`` is one of ``functional.KERNELS``. Shapes: see ``LSTM``."""
    module._update_flat_weights()
    if isinstance(input, PackedSequence):
        return _forward_packed(module, input, hx, kernel)
    _check_forward_args(module, input, hx, kernel)

    batched = input.dim() == 3
    if not batched:
        x = input.unsqueeze(1)
    elif module.batch_first:
        x = input.transpose(0, 1)
    else:
        x = input
    if hx is None:
        h0, c0 = _zero_state(module, x, x.size(1))
    elif batched:
        h0, c0 = hx[0], hx[1]
    else:
        h0, c0 = hx[0].unsqueeze(1), hx[1].unsqueeze(1)

    output, h_n, c_n = functional.lstm(x, (h0, c0), module._flat_weights, **_functional_kwargs(module, kernel))
    if not batched:
        return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    if module.batch_first:
        output = output.transpose(0, 1)
    return output, (h_n, c_n)


def _forward_packed(module, input, hx, kernel):
    """PackedSequence input: torch's semantics (hx in the caller's batch order, h_n and c_n returned in it)."""
    data, batch_sizes, sorted_indices, unsorted_indices = input
    _check_forward_args(module, data, hx, kernel, batch_sizes=batch_sizes)
    if hx is None:
        h0, c0 = _zero_state(module, data, int(batch_sizes[0]))
    elif sorted_indices is not None:
        h0, c0 = hx[0].index_select(1, sorted_indices), hx[1].index_select(1, sorted_indices)
    else:
        h0, c0 = hx[0], hx[1]
    output, h_n, c_n = functional.lstm_packed(
        data, batch_sizes, (h0, c0), module._flat_weights, **_functional_kwargs(module, kernel)
    )
    if unsorted_indices is not None:
        h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
    return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)


def _check_forward_args(module, input, hx, kernel, batch_sizes=None):
    validation.check_forward_args(
        input,
        hx,
        module._flat_weights,
        input_size=module.input_size,
        hidden_size=module.hidden_size,
        num_layers=module.num_layers,
        bidirectional=module.bidirectional,
        proj_size=module.proj_size,
        batch_first=module.batch_first,
        dropout=module.dropout,
        training=module.training,
        kernel=kernel,
        batch_sizes=batch_sizes,
    )


def _zero_state(module, like, batch):
    """h_0 (L*D, batch, H_out) and c_0 (L*D, batch, H) of zeros, in ``like``'s dtype and device."""
    rows = module.num_layers * (2 if module.bidirectional else 1)
    h0 = torch.zeros(rows, batch, module.proj_size or module.hidden_size, dtype=like.dtype, device=like.device)
    c0 = torch.zeros(rows, batch, module.hidden_size, dtype=like.dtype, device=like.device)
    return h0, c0


def _functional_kwargs(module, kernel):
    return {
        "num_layers": module.num_layers,
        "bias": module.bias,
        "bidirectional": bool(module.bidirectional),
        "proj_size": module.proj_size,
        "dropout": module.dropout,
        "training": module.training,
        "kernel": kernel,
    }


# A converted model's whole-model checkpoint loads under torch.load(weights_only=True) wherever triton_lstm has been
# imported, as the unconverted model's did. What a checkpoint can make that unpickler do with this class is what it
# can with torch.nn.LSTM once a user allowlists that (README, "Checkpoints").
torch.serialization.add_safe_globals([LSTM])


def overridden_forward(cls):
    """The class between ``cls`` and torch.nn.LSTM (``cls`` included) that defines its own ``forward``, or None."""
    for klass in cls.__mro__:
        if klass is nn.LSTM:
            return None
        if "forward" in vars(klass):
            return klass
    return None


def meta_twin(cls, old, **extra):
    """A ``cls`` (this LSTM or torch.nn.LSTM) with ``old``'s configuration, built on the meta device: nothing is
    allocated and no random numbers are drawn, since the caller supplies the weights. ``extra``: more keyword
    arguments of ``cls``."""
    with _without_dropout_warning():
        return cls(
            old.input_size,
            old.hidden_size,
            num_layers=old.num_layers,
            bias=old.bias,
            batch_first=old.batch_first,
            dropout=old.dropout,
            bidirectional=old.bidirectional,
            proj_size=old.proj_size,
            device="meta",
            **extra,
        )


def _copy_parameters(source, target):
    """Copy every weight's value and ``requires_grad`` from ``source`` into ``target`` (same names)."""
    with torch.no_grad():
        for name in target._flat_weights_names:
            value = getattr(source, name)
            weight = getattr(target, name)
            weight.copy_(value)
            weight.requires_grad_(value.requires_grad)


@contextlib.contextmanager
def _without_dropout_warning():
    """Silence the dropout warning while copying a module: its owner was warned when it was built."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="dropout option adds dropout")
        yield
