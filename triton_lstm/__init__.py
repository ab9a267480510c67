"""A drop-in replacement for ``torch.nn.LSTM`` whose recurrence runs in Triton kernels.

Three ways in: ``triton_lstm.LSTM`` in place of ``torch.nn.LSTM``; ``convert(model)`` to swap the modules of an
existing model; ``patch()`` to make ``torch.nn.LSTM`` itself (and its subclasses) run on the kernels.
"""

from triton_lstm.convert import convert, unconvert
from triton_lstm.module import LSTM
from triton_lstm.patch import is_patched, patch, patched, unpatch

__all__ = ["LSTM", "convert", "is_patched", "patch", "patched", "unconvert", "unpatch"]
