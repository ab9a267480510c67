"""Tests of the providers' plumbing on tiny configurations: every peer computes torch.nn.LSTM's function on its
weights, every configuration a provider cannot run is skipped with a reason (and never dropped), the float32
precision flags travel with each row, and ``--list`` names every provider."""

import importlib.util

import pytest
import torch

from bench import providers, sweep
from bench.configs import BenchConfig
from bench.environment import float32_matmul_precision
from bench.providers import (
    COMPILED_CELL,
    FLASHRNN,
    PROVIDERS,
    Workload,
    build_provider,
    flashrnn_backends,
    make_reference,
    output_data,
    skip_reason,
)
from bench.results import read_results

CPU = torch.device("cpu")
HAS_FLASHRNN = importlib.util.find_spec("flashrnn") is not None


def _run(name, config):
    reference = make_reference(config, CPU, seed=1)
    workload = Workload.draw(config, CPU, seed=2)
    module = build_provider(name, reference, config, CPU)
    x = workload.model_input(workload.x)
    output, (h_n, c_n) = module(x)
    expected, (h_expected, c_expected) = reference(x)
    torch.testing.assert_close(output_data(output), output_data(expected))
    torch.testing.assert_close(h_n, h_expected)
    torch.testing.assert_close(c_n, c_expected)
    return module


@pytest.mark.parametrize(
    "config",
    [
        BenchConfig(3, 5, 6, 4, dtype="float64"),
        BenchConfig(3, 5, 6, 4, num_layers=2, bidirectional=True, dtype="float64"),
        BenchConfig(2, 4, 6, 5, num_layers=2, proj_size=3, bidirectional=True, dtype="float64"),
        BenchConfig(4, 6, 5, 3, num_layers=2, bidirectional=True, dtype="float64", packed=True),
    ],
    ids=lambda config: config.id,
)
def test_compiled_cell_matches_torch(config):
    module = _run(COMPILED_CELL, config)
    assert module.variant == "aot_eager"  # Inductor on a GPU (bench.providers.compile_backend)


def test_compiled_cell_gradients_match_torch():
    config = BenchConfig(3, 4, 5, 4, num_layers=2, dtype="float64")
    reference = make_reference(config, CPU, seed=1)
    module = build_provider(COMPILED_CELL, reference, config, CPU)
    x = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    weights = list(reference.parameters())
    ours = torch.autograd.grad(module(x)[0].sum(), [x, *weights])
    theirs = torch.autograd.grad(reference(x)[0].sum(), [x, *weights])
    for mine, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, expected)


@pytest.mark.skipif(not HAS_FLASHRNN, reason="flashrnn is not installed (pip install -e '.[bench]')")
@pytest.mark.parametrize(
    "config",
    [BenchConfig(3, 5, 8, 6, dtype="float32"), BenchConfig(2, 4, 8, 8, num_layers=3, dtype="float32")],
    ids=lambda config: config.id,
)
def test_flashrnn_layout_matches_torch(config):
    # FlashRNN's PyTorch backend takes the same Wx, R and b layouts as its CUDA kernels: this checks the mapping
    # of torch's weights (gate order, R's axes, the bias) without a GPU.
    module = _run(FLASHRNN, config)
    assert module.variant == "vanilla"


def test_flashrnn_skip_reasons():
    base = dict(batch=2, seq_len=3, hidden_size=8, input_size=8)
    cases = {
        BenchConfig(**base, bidirectional=True): "no reverse direction",
        BenchConfig(**base, proj_size=4): "no projection",
        BenchConfig(**base, packed=True): "PackedSequence",
        BenchConfig(**base, dtype="float64"): "float64",
    }
    for config, reason in cases.items():
        assert reason in PROVIDERS[FLASHRNN].unsupported(config, CPU), config.id
    assert PROVIDERS[FLASHRNN].unsupported(BenchConfig(**base, num_layers=3, dtype="bfloat16"), CPU) is None
    cuda = torch.device("cuda")
    assert flashrnn_backends(BenchConfig(16, 3, 256, 256, dtype="float16"), cuda) == ("cuda_fused", "cuda")
    assert flashrnn_backends(BenchConfig(16, 3, 64, 64, dtype="float16"), cuda)[0] == "triton_fused"
    # The fused kernel multiplies float32 in TF32 whatever torch's flags: without TF32 only the alternating one.
    assert flashrnn_backends(BenchConfig(16, 3, 256, 256, dtype="float32", tf32=False), cuda) == ("cuda",)
    assert flashrnn_backends(BenchConfig(16, 3, 256, 256), CPU) == ("vanilla",)


def test_a_provider_not_installed_is_skipped_with_the_reason(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flashrnn" else real(name, *a))
    config = BenchConfig(2, 3, 8, 8)
    assert "not installed" in skip_reason(FLASHRNN, config, CPU)
    path = tmp_path / "sweep.csv"
    sweep.main(["--preset", "cpu", "--max-configs", "1", "--providers", "torch,flashrnn", "--out", str(path)])
    rows = [row for row in read_results(path) if row["provider"] == FLASHRNN]
    assert [(row["mode"], row["status"]) for row in rows] == [("forward", "skipped"), ("forward_backward", "skipped")]
    assert all("not installed" in row["reason"] for row in rows)


def test_require_warm_skips_what_the_warm_up_did_not_build(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_WARM_DIR", str(tmp_path / "warm"))
    monkeypatch.setenv("BENCH_REQUIRE_WARM", "naive")
    built, other = BenchConfig(2, 3, 8, 8), BenchConfig(2, 3, 8, 8, num_layers=2)
    assert "warm-up" in skip_reason("naive", built, CPU)
    assert sweep.main(["--preset", "cpu", "--max-configs", "1", "--providers", "naive", "--compile-only"]) == 0
    # The marker ignores the sequence length: --compile-only runs at T <= 32, the timed run at any T.
    assert skip_reason("naive", BenchConfig(2, 100, 8, 8), CPU) is None
    assert skip_reason("naive", built, CPU) is None and "warm-up" in skip_reason("naive", other, CPU)
    assert skip_reason("torch", other, CPU) is None  # not named in BENCH_REQUIRE_WARM


def test_sweep_every_provider_one_row_each_with_skips_and_precision(tmp_path):
    path = tmp_path / "sweep.csv"
    configs = "B2-T4-H8-I8-L1-bi-fp32 B2-T4-H8-I8-L1-uni-fp32ieee"
    args = ["--providers", ",".join(PROVIDERS), "--modes", "forward", "--preset", "cpu", "--packed", "0"]
    args += ["--num-layers", "1"]
    assert sweep.main([*args, "--bidirectional", "1", "--dtype", "fp32", "--out", str(path)]) == 0
    assert sweep.main([*args, "--bidirectional", "0", "--dtype", "fp32ieee", "--out", str(tmp_path / "ieee.csv")]) == 0
    rows = read_results(path) + read_results(tmp_path / "ieee.csv")
    assert [row["config"] for row in rows if row["provider"] == "torch"] == configs.split()
    for row in rows:
        assert row["provider"] in PROVIDERS and row["status"] in ("ok", "skipped"), (row["provider"], row["error"])
        assert row["status"] == "ok" or row["reason"], row
    status = {(row["config"].split("-")[-2] + "-" + row["config"].split("-")[-1], row["provider"]): row for row in rows}
    assert status[("bi-fp32", FLASHRNN)]["status"] == "skipped" or not HAS_FLASHRNN
    # kernel="auto" runs the per-step kernel under the interpreter: its rows point at triton_step's.
    assert "triton_step" in status[("bi-fp32", "triton_auto")]["reason"]
    assert status[("bi-fp32", "torch")]["fp32_precision"] == "tf32"
    assert status[("uni-fp32ieee", "torch")]["fp32_precision"] == "ieee"
    assert status[("uni-fp32ieee", COMPILED_CELL)]["variant"] == "aot_eager"
    assert status[("uni-fp32ieee", "triton_step")]["variant"] == "step"


def test_float32_precision_flags_set_and_restored():
    rnn, matmul = torch.backends.cudnn.rnn, torch.backends.cuda.matmul
    before = (rnn.fp32_precision, matmul.fp32_precision)
    with float32_matmul_precision(False):
        assert (rnn.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        with float32_matmul_precision(True):
            assert (rnn.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        assert rnn.fp32_precision == "ieee"
    assert (rnn.fp32_precision, matmul.fp32_precision) == before


def test_list_shows_every_provider(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flashrnn" else real(name, *a))
    assert sweep.main(["--list", "--preset", "quick"]) == 0
    text = capsys.readouterr().out
    for name in PROVIDERS:
        assert f"\n  {name} " in text, name
    assert "flashrnn           SKIPPED: flashrnn is not installed" in text
    assert "preset quick: 20 configurations" in text and "estimated timed phase" in text
    assert providers.provider_names()[0] == "torch" and providers.provider_names()[-1] == "naive"


def test_cuda_paths_for_a_toolkit_without_cublas_headers(tmp_path):
    from bench.cuda_paths import exports

    # pip's CUDA 13 packages: headers and versioned libraries under nvidia/cu13/.
    root = tmp_path / "site" / "nvidia"
    (root / "cu13" / "include").mkdir(parents=True)
    (root / "cu13" / "include" / "cublas_v2.h").touch()
    (root / "cu13" / "lib").mkdir()
    (root / "cu13" / "lib" / "libcublas.so.13").touch()
    toolkit = tmp_path / "cuda"
    (toolkit / "include").mkdir(parents=True)
    lines = exports(tmp_path / "lib", str(toolkit), [root])
    assert lines[0] == f"export FLASHRNN_EXTRA_INCLUDE_PATHS='{root}/cu13/include'"
    assert lines[1].startswith(f"export LIBRARY_PATH='{tmp_path}/lib:{root}/cu13/lib'")
    assert (tmp_path / "lib" / "libcublas.so").resolve() == root / "cu13" / "lib" / "libcublas.so.13"
    (toolkit / "include" / "cublas_v2.h").touch()
    assert exports(tmp_path / "lib", str(toolkit), [root])[0].startswith("#")  # a full toolkit: nothing to add
