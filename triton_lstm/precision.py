"""Whether float32 products may use TF32 tensor cores: exactly where torch's own LSTM would.

On CUDA, torch.nn.LSTM runs in cuDNN, which multiplies float32 in TF32 when the RNN precision resolves to "tf32":
``torch.backends.cudnn.rnn.fp32_precision``, where it is "none" the cuDNN-wide ``torch.backends.cudnn.fp32_precision``,
where that is "none" the global ``torch.backends.fp32_precision`` (ATen's ``Context::float32Precision``; the legacy
``torch.backends.cudnn.allow_tf32`` writes these). With cuDNN disabled torch's LSTM runs its matmuls in cuBLAS, whose
setting is the matmul one (``torch.backends.cuda.matmul.fp32_precision``, off by default). torch versions without the
per-operator settings have only the legacy flags. TF32 needs compute capability 8.0; the CPU never uses it.
The setting is read at every call, as torch reads it.
"""

import torch


def _resolved(*precisions: str) -> str:
    """The first setting that is not "none" (inherit), along the chain from the operator to the global one."""
    return next((p for p in precisions if p != "none"), "none")


def _torch_lstm_uses_tf32() -> bool:
    backends = torch.backends
    if not backends.cudnn.enabled:
        matmul = backends.cuda.matmul
        if hasattr(matmul, "fp32_precision"):
            return _resolved(matmul.fp32_precision, backends.fp32_precision) == "tf32"
        return matmul.allow_tf32
    rnn = getattr(backends.cudnn, "rnn", None)
    if rnn is None:
        return backends.cudnn.allow_tf32
    return _resolved(rnn.fp32_precision, backends.cudnn.fp32_precision, backends.fp32_precision) == "tf32"


def use_tf32(dtype: torch.dtype, device: torch.device, arch: int | None = None) -> bool:
    """True when float32 products of tensors on ``device`` should run in TF32. ``arch``: the device's compute
    capability as 10 * major + minor, when the caller knows it."""
    if dtype != torch.float32 or device.type != "cuda":
        return False
    if arch is None:
        major, minor = torch.cuda.get_device_capability(device)
        arch = 10 * major + minor
    return arch >= 80 and _torch_lstm_uses_tf32()
