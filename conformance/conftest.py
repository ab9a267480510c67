"""Shared fixtures: one suite for both worlds.

On a machine with a GPU the suite runs on CUDA tensors; without one, on CPU tensors through Triton's interpreter,
which must be switched on before triton_lstm (and so its kernels) is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# triton 3.9 warns when this is unset (its default changes in 3.10); keep today's default, fused multiply-adds.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest

from conformance.helpers import TritonOnly, exact_float32_torch


def pytest_addoption(parser):
    parser.addoption(
        "--full-matrix",
        action="store_true",
        help="run the full product of mode factors at every dtype (hours under the interpreter)",
    )


@pytest.fixture
def device():
    """CUDA when there is a GPU, else the CPU. The kernels compute exact float32, so torch's reference must too."""
    with exact_float32_torch():
        yield torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def triton_only(monkeypatch):
    """Context in which torch's own LSTM raises and the Triton launches are counted: proves the kernels ran."""
    return TritonOnly(monkeypatch)
