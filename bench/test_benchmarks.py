"""pytest-benchmark records: forward and forward+backward of every provider on a few representative configurations.

Each record's ``extra_info`` holds the configuration, tokens/s, achieved TFLOP/s (FLOP model in ``bench.flops``),
the error against torch.nn.LSTM, and the machine facts (device, torch and triton versions, git commit). One untimed
call before the timed rounds keeps compilation and autotuning out of them. On CPU the sizes are tiny and the
kernels run in the interpreter: the records check the pipeline, they measure nothing (``extra_info["note"]``).
Save records with ``--benchmark-json=PATH``.
"""

import pytest
import torch

from bench.configs import pytest_configs
from bench.environment import bench_device, float32_matmul_precision
from bench.flops import MODES, flops
from bench.providers import (
    Workload,
    build_provider,
    make_call,
    make_reference,
    output_data,
    provider_names,
    skip_reason,
)
from bench.timing import synchronize

ON_GPU = bench_device().type == "cuda"
ROUNDS = 20 if ON_GPU else 3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", provider_names())
@pytest.mark.parametrize("config", pytest_configs(ON_GPU), ids=lambda config: config.id)
def test_lstm(benchmark, config, provider, mode, device, machine):
    reason = skip_reason(provider, config, device)
    if reason:
        pytest.skip(reason)
    with float32_matmul_precision(config.tf32):
        _record(benchmark, config, provider, mode, device, machine)


def _record(benchmark, config, provider, mode, device, machine):
    reference = make_reference(config, device)
    workload = Workload.draw(config, device)
    expected = make_call(reference, workload, "forward")()
    module = build_provider(provider, reference, config, device)
    call = make_call(module, workload, mode)

    def timed():
        call()
        synchronize(device)

    output = output_data(call())  # compilation and autotuning happen here, outside the timed rounds
    synchronize(device)
    assert torch.isfinite(output).all(), f"{provider} gave non-finite output"

    benchmark.group = f"{config.id} {mode}"
    benchmark.extra_info.update(
        machine.as_dict(),
        config=config.as_dict(),
        config_id=config.id,
        provider=provider,
        variant=getattr(module, "variant", ""),
        mode=mode,
        max_abs_err=(output.float() - expected.float()).abs().max().item(),
    )
    benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["tokens_per_s"] = config.tokens / seconds
        benchmark.extra_info["tflops"] = flops(config, mode) / seconds / 1e12
