"""A rough estimate of how long a sweep takes on an H100/H200, to size the presets (``python -m bench --list``).

Per provider, a cost per time step of one layer in the forward, from the H200 runs in bench/results/h200-issue4/
where there are any (torch 2 to 20 us a step, our persistent kernel 3 to 20 in 16-bit types and 20 to 160 in float32,
the per-step kernel 50 to 150, mostly launches) and guesses where not (compiled_cell, flashrnn, naive). Against the
rows of the issue-4 runs the estimate is 0.9 to 2 times their measured time. A forward+backward call costs
``BACKWARD_FACTOR`` forwards. A row costs two untimed calls plus the timed ones (``bench.timing.measure``: about
0.15 s of calls, at least 3). Compilation is not included: gpu_check.sh compiles in a first phase, in parallel; what
the timed phase still pays per configuration (Dynamo's tracing for compiled_cell, loading FlashRNN's extension, whose
tile search ``bench.providers`` keeps on disk between processes) is ``PER_CONFIG_S``.
"""

from bench.configs import BenchConfig

# Microseconds per step and layer, forward, at B <= 64 and H <= 1024 in 16-bit types (see above).
STEP_US = {
    "torch": 12.0,
    "triton_auto": 15.0,
    "triton_persistent": 15.0,
    "triton_step": 70.0,
    "compiled_cell": 60.0,
    "flashrnn": 10.0,
    "naive": 80.0,
}
DEFAULT_STEP_US = 70.0  # a kernel added to triton_lstm.functional.KERNELS later
BACKWARD_FACTOR = {"triton_auto": 4.0, "triton_persistent": 4.0, "triton_step": 2.2}
DEFAULT_BACKWARD_FACTOR = 3.0
# The persistent kernel in float32 is 3 to 8 times slower a step than in fp16 (exact products on FMA units); the
# per-step kernel's time is mostly launches, whatever the dtype.
PERSISTENT = ("triton_auto", "triton_persistent")
DTYPE_FACTOR = {"float16": 1.0, "bfloat16": 1.0, "float32": 3.0, "float64": 6.0}
PER_CONFIG_S = {"compiled_cell": 3.0, "flashrnn": 3.0}
ROW_OVERHEAD_S = 0.05
CONFIG_OVERHEAD_S = 0.3  # weights, inputs and torch's reference output of each configuration


def call_seconds(provider: str, config: BenchConfig, mode: str) -> float:
    """Estimated seconds of one call of ``provider`` on ``config`` in ``mode``."""
    step = STEP_US.get(provider, DEFAULT_STEP_US)
    # Work per step beyond B = 64 and H = 1024 (more tiles per program, or more programs per step).
    size = max(1.0, config.batch / 64) * max(1.0, (config.hidden_size / 1024) ** 2)
    if provider in PERSISTENT:
        size *= DTYPE_FACTOR.get(config.dtype, 1.0)
    elif config.dtype == "float64":
        size *= 2.0
    directions = 1.3 if provider.startswith("triton_") else float(config.num_directions)
    seconds = step * 1e-6 * size * config.seq_len * config.num_layers * (directions if config.bidirectional else 1.0)
    if mode == "forward_backward":
        seconds *= BACKWARD_FACTOR.get(provider, DEFAULT_BACKWARD_FACTOR)
    return seconds


def row_seconds(provider: str, config: BenchConfig, mode: str, target_s=0.15, min_reps=3, max_reps=50) -> float:
    """Estimated seconds of one CSV row: two untimed calls, then the timed repetitions."""
    call = call_seconds(provider, config, mode)
    reps = min(max_reps, max(min_reps, int(target_s // max(call, 1e-6))))
    return ROW_OVERHEAD_S + (2 + reps) * call


def sweep_seconds(configs, providers, modes, runs=lambda provider, config: True) -> float:
    """Estimated seconds of a sweep's timed phase, compilation excluded (see the module's docstring); ``runs(provider,
    config)`` False leaves a pair out (a provider that skips the configuration)."""
    total = 0.0
    for config in configs:
        total += CONFIG_OVERHEAD_S
        for provider in providers:
            if not runs(provider, config):
                continue
            total += PER_CONFIG_S.get(provider, 0.0)
            total += sum(row_seconds(provider, config, mode) for mode in modes)
    return total
