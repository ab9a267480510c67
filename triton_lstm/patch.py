"""Patch mode: every ``torch.nn.LSTM``, subclasses included, computes through the Triton kernels and stays what it is.

``patch()`` replaces one attribute, ``torch.nn.LSTM.forward``, by ``_forward`` (which runs ``module.lstm_forward``,
our module's own path: same checks, errors, dtypes, packed input, kernel choice and fallback); ``unpatch()`` puts
torch's function object back. Nothing else changes: instances keep their class (``isinstance(m, torch.nn.LSTM)``),
parameters, ``state_dict``, hooks, ``flatten_parameters`` and pickles, so unchanged code, existing checkpoints and
subclasses whose own ``forward`` calls ``super().forward`` (pytorch-forecasting's ``LSTM``) all run the kernels.
Modules created before and after ``patch()`` are alike: the class attribute is looked up at every call.

The patch is process-wide (a class attribute), so it applies in every thread at once; ``patch``, ``unpatch`` and
``patched`` take one lock, and a call already running keeps the function it started with. ``torch.compile`` does
not reach the kernels this way: Dynamo refuses to trace ``torch.nn.LSTM`` instances (a graph break, or an error
with ``fullgraph=True``) and runs them eagerly, which in patch mode still means through the kernels. Use
``triton_lstm.convert`` or ``triton_lstm.LSTM`` under ``torch.compile``.
"""

import contextlib
import threading

from torch import nn

from triton_lstm import validation
from triton_lstm.module import lstm_forward

_lock = threading.RLock()
_torch_forward = None  # torch.nn.LSTM.forward as it was before patch(), while patched
_kernel = "auto"


def patch(kernel: str = "auto") -> None:
    """Make every ``torch.nn.LSTM`` run on the Triton kernels, with ``kernel`` (one of ``functional.KERNELS``;
    ``"auto"`` falls back to torch's own LSTM where Triton cannot run, a named kernel raises there). Calling it again
    only changes the kernel."""
    validation.check_kernel(kernel)
    global _torch_forward, _kernel
    with _lock:
        if _torch_forward is None:
            _torch_forward = nn.LSTM.__dict__["forward"]
            nn.LSTM.forward = _forward
        _kernel = kernel


def unpatch() -> None:
    """Give ``torch.nn.LSTM`` back its own ``forward`` (the same function object); nothing to do when not patched."""
    global _torch_forward, _kernel
    with _lock:
        if _torch_forward is not None:
            nn.LSTM.forward = _torch_forward
            _torch_forward = None
            _kernel = "auto"


def is_patched() -> bool:
    """Whether ``torch.nn.LSTM`` currently runs on the Triton kernels."""
    return _torch_forward is not None


@contextlib.contextmanager
def patched(kernel: str = "auto"):
    """``patch(kernel)`` for the duration of a ``with`` block, then the state before it: nested blocks restore the
    outer block's kernel, and the outermost one unpatches (unless ``patch()`` was called before it)."""
    with _lock:
        before = _kernel if is_patched() else None
        patch(kernel)
    try:
        yield
    finally:
        with _lock:
            if before is None:
                unpatch()
            else:
                patch(before)


def _forward(self, input, hx=None):
    """``torch.nn.LSTM.forward`` in patch mode: the module's own weights through ``triton_lstm``'s kernels."""
    return lstm_forward(self, input, hx, kernel=_kernel)
