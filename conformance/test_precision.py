"""float32 products follow torch's own LSTM: TF32 exactly where torch.nn.LSTM would use it, exact products elsewhere.

The policy (``triton_lstm.precision``) is checked on every machine; its effect, TF32 tensor-core products compared
with torch's own TF32 LSTM, only on a GPU (the interpreter multiplies float32 exactly whatever it is asked).
"""

import pytest
import torch

import triton_lstm
from conformance.helpers import assert_error_within, float64_twin
from triton_lstm import precision

CUDA = torch.device("cuda")


@pytest.fixture
def restore_flags():
    """Leave torch's precision settings as they were: the legacy flags write the per-operator ones."""
    backends = torch.backends
    saved = (backends.cudnn.enabled, backends.fp32_precision, backends.cudnn.fp32_precision,
             backends.cudnn.rnn.fp32_precision, backends.cuda.matmul.fp32_precision)  # fmt: skip
    yield
    (backends.cudnn.enabled, backends.fp32_precision, backends.cudnn.fp32_precision, backends.cudnn.rnn.fp32_precision,
     backends.cuda.matmul.fp32_precision) = saved  # fmt: skip


def test_tf32_follows_torchs_rnn_setting(restore_flags):
    backends = torch.backends
    backends.cudnn.enabled = True
    backends.cudnn.rnn.fp32_precision = "tf32"
    assert precision.use_tf32(torch.float32, CUDA, arch=90)
    # Only float32, only on CUDA, only from Ampere on.
    assert not precision.use_tf32(torch.float16, CUDA, arch=90)
    assert not precision.use_tf32(torch.float64, CUDA, arch=90)
    assert not precision.use_tf32(torch.float32, torch.device("cpu"), arch=90)
    assert not precision.use_tf32(torch.float32, CUDA, arch=75)
    backends.cudnn.rnn.fp32_precision = "ieee"
    assert not precision.use_tf32(torch.float32, CUDA, arch=90)
    # "none" inherits: from the cuDNN-wide setting, then from the global one.
    backends.cudnn.rnn.fp32_precision = "none"
    backends.cudnn.fp32_precision = "tf32"
    assert precision.use_tf32(torch.float32, CUDA, arch=90)
    backends.cudnn.fp32_precision = "none"
    backends.fp32_precision = "tf32"
    assert precision.use_tf32(torch.float32, CUDA, arch=90)
    backends.fp32_precision = "ieee"
    assert not precision.use_tf32(torch.float32, CUDA, arch=90)


def test_tf32_follows_the_legacy_flag(restore_flags):
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.allow_tf32 = False
    assert not precision.use_tf32(torch.float32, CUDA, arch=90)
    torch.backends.cudnn.allow_tf32 = True
    assert precision.use_tf32(torch.float32, CUDA, arch=90)


def test_without_cudnn_tf32_follows_the_matmul_setting(restore_flags):
    """torch's LSTM then runs its matmuls in cuBLAS (TF32 off by default)."""
    backends = torch.backends
    backends.cudnn.enabled = False
    backends.cudnn.rnn.fp32_precision = "tf32"
    backends.cuda.matmul.fp32_precision = "ieee"
    assert not precision.use_tf32(torch.float32, CUDA, arch=90)
    backends.cuda.matmul.fp32_precision = "tf32"
    assert precision.use_tf32(torch.float32, CUDA, arch=90)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 products run only on a GPU")
@pytest.mark.parametrize("kernel", ["step", "persistent"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_tf32_matches_torchs_tf32(kernel, bidirectional, restore_flags, triton_only):
    """With torch's default (TF32 for its LSTM), ours is as close to float64 as torch's own TF32 result, outputs and
    gradients, and uses TF32 itself (its error is far above exact float32's)."""
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    torch.manual_seed(0)
    reference = torch.nn.LSTM(256, 256, bidirectional=bidirectional, device=CUDA)
    ours = triton_lstm.LSTM.from_torch(reference, kernel=kernel)
    x = torch.randn(64, 16, 256, device=CUDA)
    runs = []
    for module, inputs in ((reference, x), (float64_twin(reference), x.double()), (ours, x)):
        leaf = inputs.detach().requires_grad_()
        with triton_only() if module is ours else torch.enable_grad():
            output, _ = module(leaf)
            (grad,) = torch.autograd.grad(output.square().sum(), leaf)
        runs.append((output, grad))
    (theirs, their_grad), (ref64, ref64_grad), (output, grad) = runs
    assert_error_within("output", output, theirs, ref64, factor=2.0, atol=1e-5)
    assert_error_within("grad input", grad, their_grad, ref64_grad, factor=2.0, atol=1e-5)
    assert (output.double() - ref64).abs().max().item() > 1e-5, "no TF32 rounding seen: exact products ran"
