"""The machine a benchmark runs on: the interpreter switch for machines without a GPU, and the facts (device,
versions, git commit, time) that every record carries.
"""

import contextlib
import datetime
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU_NOTE = "pipeline check on CPU through the Triton interpreter: not a performance figure"


def use_interpreter_without_cuda() -> None:
    """Run Triton kernels on CPU tensors through the interpreter when there is no GPU.

    Must run before ``triton_lstm`` is imported: Triton picks the interpreter when a kernel is decorated. An
    explicit TRITON_INTERPRET in the environment is left as it is.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # triton 3.9 warns when this is unset (its default changes in 3.10); keep today's default, as the tests do.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def bench_device() -> torch.device:
    """The device benchmarks run on: the current GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Machine:
    """What was measured where: carried in every CSV row and every pytest-benchmark record."""

    device: str
    device_type: str
    torch_version: str
    triton_version: str
    python_version: str
    cuda_version: str
    git_commit: str
    timestamp: str
    env: str
    note: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def git_commit() -> str:
    """The BENCH_GIT_COMMIT environment variable when set (a tree copied to a GPU machine may carry a stale .git:
    measured, it reported an older commit there), else HEAD's hash with ``-dirty`` when tracked files differ from
    it, else ``unknown`` outside a git checkout."""
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True, timeout=30
    )
    return result.stdout.strip()


def triton_environment() -> str:
    """The TRITON_* variables in effect (TRITON_LSTM_AUTOTUNE=0, TRITON_INTERPRET=1, ...), as ``A=1;B=0``."""
    return ";".join(f"{name}={value}" for name, value in sorted(os.environ.items()) if name.startswith("TRITON_"))


def describe_machine(device: torch.device) -> Machine:
    """The facts about this run on ``device``; the timestamp is now, in UTC."""
    import triton

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        note = ""
    else:
        name = f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
        note = CPU_NOTE
    return Machine(
        device=name,
        device_type=device.type,
        torch_version=torch.__version__,
        triton_version=triton.__version__,
        python_version=platform.python_version(),
        cuda_version=torch.version.cuda or "",
        git_commit=git_commit(),
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        env=triton_environment(),
        note=note,
    )


@contextlib.contextmanager
def float32_matmul_precision(tf32: bool):
    """Allow TF32 in float32 matrix products (``tf32``) or forbid it, for cuDNN's RNNs and for cuBLAS matmuls, as
    torch's flags say it; restored on exit.

    torch 2.9 and later: ``torch.backends.cudnn.rnn.fp32_precision`` and ``torch.backends.cuda.matmul.
    fp32_precision`` ("tf32" or "ieee"; mixing them with the legacy ``allow_tf32`` flags raises). Older torch: the
    ``allow_tf32`` flags. triton_lstm's kernels follow cuDNN's RNN flag (the flag torch.nn.LSTM follows), the
    compiled and naive loops cuBLAS's, FlashRNN's alternating kernel cuBLAS's through torch's handle.
    """
    value = "tf32" if tf32 else "ieee"
    rnn = getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None)
    if rnn is not None:
        saved = (torch.backends.cudnn.rnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        torch.backends.cudnn.rnn.fp32_precision = value
        torch.backends.cuda.matmul.fp32_precision = value
        try:
            yield
        finally:
            torch.backends.cudnn.rnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
