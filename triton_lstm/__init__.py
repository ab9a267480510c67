"""A drop-in replacement for ``torch.nn.LSTM`` whose recurrence runs in Triton kernels."""

from triton_lstm.convert import convert, unconvert
from triton_lstm.module import LSTM

__all__ = ["LSTM", "convert", "unconvert"]
