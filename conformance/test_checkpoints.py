"""Whole-model checkpoints under ``torch.load(weights_only=True)``, with the allowlist users already have.

Code that loads a model's checkpoint with the weights-only unpickler lists the classes it trusts
(``torch.serialization.safe_globals([torch.nn.LSTM, ...])``). A converted model pickles ``triton_lstm.LSTM``, which
importing ``triton_lstm`` allowlists (README, "Checkpoints", says why that is safe); a patched model pickles exactly
what the unpatched one does. Each loaded model must run on the Triton kernels and give the saved model's results.
"""

import io
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

import triton_lstm
from conformance.helpers import assert_conforms

REPO = pathlib.Path(__file__).resolve().parents[1]


class Tagger(nn.Module):
    """A model as user code writes it: torch.nn.LSTM inside, and a head."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


# What the user's loading code trusts: its own classes and torch's; nothing from triton_lstm.
USER_ALLOWLIST = [Tagger, nn.LSTM, nn.Linear]


def _save(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


def _load(data):
    with torch.serialization.safe_globals(USER_ALLOWLIST):
        return torch.load(io.BytesIO(data), weights_only=True)


@pytest.mark.parametrize("kernel", ["auto", "step"])
def test_converted_model_loads_weights_only_with_the_users_allowlist(kernel, device, triton_only):
    torch.manual_seed(0)
    model = triton_lstm.convert(Tagger().to(device), kernel=kernel)
    x = torch.randn(4, 5, 3, device=device)
    expected = model(x)
    loaded = _load(_save(model))
    assert type(loaded) is Tagger and type(loaded.lstm) is triton_lstm.LSTM and loaded.lstm.kernel == kernel
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters(), strict=True))
    with triton_only() as launches:
        got = loaded(x)
    assert launches.launches["forward"] > 0
    assert_conforms("output", got, expected)


def test_patched_model_checkpoint_is_the_unpatched_ones(device, triton_only):
    torch.manual_seed(0)
    model = Tagger().to(device)
    x = torch.randn(4, 5, 3, device=device)
    expected = model(x)
    unpatched = _save(model)
    with triton_lstm.patched("step"):
        saved = _save(model)
        loaded = _load(saved)
        assert type(loaded.lstm) is nn.LSTM
        with triton_only() as launches:
            got = loaded(x)
    assert b"triton_lstm" not in saved and saved == unpatched
    assert launches.launches["forward"] > 0
    assert_conforms("output", got, expected)


def test_only_the_module_class_is_allowlisted():
    ours = [g for g in torch.serialization.get_safe_globals() if getattr(g, "__module__", "").startswith("triton_lstm")]
    assert ours == [triton_lstm.LSTM]


def test_a_process_that_never_imported_triton_lstm_is_told_which_global_to_allow(tmp_path):
    """The allowlist entry comes from importing triton_lstm: without it the weights-only unpickler names the class
    (torch's own message), and importing triton_lstm is the fix."""
    torch.manual_seed(0)
    path = tmp_path / "converted.pt"
    torch.save(triton_lstm.convert(nn.LSTM(3, 4)), path)
    script = (
        "import sys, torch\n"
        f"path = {str(path)!r}\n"
        "try:\n"
        "    torch.load(path, weights_only=True)\n"
        "except Exception as error:\n"
        '    print(type(error).__name__, str(error).replace("\\n", " "))\n'
        "import triton_lstm\n"
        "print(type(torch.load(path, weights_only=True)).__qualname__)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = done.stdout.strip().splitlines()[-2:]
    assert first.startswith("UnpicklingError") and "GLOBAL triton_lstm.module.LSTM was not an allowed global" in first
    assert second == "LSTM"
