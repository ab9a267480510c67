"""Fixtures of ``pytest bench/``: the device and the machine facts every record carries.

Without a GPU the Triton kernels run on CPU tensors through the interpreter, which must be switched on before
triton_lstm is imported (the test modules import it): this conftest does that first.
"""

import pytest
import torch

from bench.environment import Machine, bench_device, describe_machine, use_interpreter_without_cuda

use_interpreter_without_cuda()


@pytest.fixture(scope="session")
def device() -> torch.device:
    return bench_device()


@pytest.fixture(scope="session")
def machine(device) -> Machine:
    return describe_machine(device)
