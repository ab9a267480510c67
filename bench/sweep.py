"""``python -m bench``: the configuration sweep. For every configuration of a preset, every provider and both
modes, time one call and write one CSV row (schema in ``bench.results``) with the machine facts, the timing, the
model's FLOPs and bytes, the hardware floor and the speedup over torch.nn.LSTM.

A provider that cannot run a configuration (not installed, a feature it lacks) gets rows with ``status=skipped``
and the reason; one that fails gets rows with the error; the sweep goes on. With ``--time-budget`` the sweep starts
no measurement after the budget is spent; what is left is written as skipped. ``--compile-only`` calls every
provider once per configuration on a short sequence, to fill the compilers' caches before a timed run.
"""

import argparse
import contextlib
import datetime
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from bench.configs import DTYPE_SHORT, PRECISIONS, PRESETS, BenchConfig, build_configs, precision
from bench.environment import (
    REPO_ROOT,
    Machine,
    bench_device,
    describe_machine,
    float32_matmul_precision,
    use_interpreter_without_cuda,
)
from bench.estimate import sweep_seconds
from bench.flops import MODES, bytes_moved, floor_seconds, flops
from bench.progress import Progress
from bench.results import SCHEMA_VERSION, ResultWriter
from bench.timing import HardwarePeaks, Timing, measure, measure_peaks, synchronize

RESULTS_DIR = REPO_ROOT / "bench" / "results"
_DTYPE_NAMES = {**{short: name for name, short in DTYPE_SHORT.items()}, **{name: name for name in DTYPE_SHORT}}
COMPILE_SEQ_LEN = 32  # --compile-only: no kernel specialises on the sequence length


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(value) for value in text.split(","))


def _input_sizes(text: str) -> tuple[int | None, ...]:
    return tuple(None if value.lower() == "h" else int(value) for value in text.split(","))


def _bools(text: str) -> tuple[bool, ...]:
    table = {"0": False, "1": True, "false": False, "true": True}
    return tuple(table[value.lower()] for value in text.split(","))


def _dtypes(text: str) -> tuple[str, ...]:
    """Full dtype names of comma-separated dtypes (fp16 or float16, ...)."""
    return tuple(_DTYPE_NAMES[value] for value in text.split(","))


def _precisions(text: str) -> tuple[str, ...]:
    """Comma-separated precisions (fp16, bf16, fp32, fp32ieee, fp64, or full dtype names), checked."""
    names = tuple(text.split(","))
    for name in names:
        precision(name)
    return names


# Flags that replace one axis of the preset's grid: (flag, axis, parser).
_AXIS_FLAGS = (
    ("--batch", "batch", _ints),
    ("--seq-len", "seq_len", _ints),
    ("--hidden-size", "hidden_size", _ints),
    ("--input-size", "input_size", _input_sizes),
    ("--num-layers", "num_layers", _ints),
    ("--bidirectional", "bidirectional", _bools),
    ("--dtype", "dtype", _precisions),
    ("--packed", "packed", _bools),
)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose configurations (shared with ``python -m bench.floor``)."""
    parser.add_argument("--preset", choices=list(PRESETS), help="configuration set (default: quick on a GPU, else cpu)")
    parser.add_argument("--max-configs", type=int, help="run only the first N configurations")
    parser.add_argument(
        "--part", default="0/1", help="I/N: configurations I, I + N, ... of the preset (one of N GPU runs)"
    )
    parser.add_argument(
        "--shard", default="0/1", help="I/N: of those, configurations I, I + N, I + 2N, ... (one of N processes)"
    )
    for flag, axis, _ in _AXIS_FLAGS:
        parser.add_argument(flag, dest=axis, help=f"comma-separated values replacing the preset's {axis} axis")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument(
        "--out", help="CSV to write; a bare file name goes under bench/results/ (default: a timestamped name there)"
    )
    parser.add_argument("--providers", help="comma-separated providers (default: all; see --list)")
    parser.add_argument("--exclude-providers", help="comma-separated providers to leave out of --providers")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--time-budget", type=float, help="seconds after which no new measurement starts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help=f"call every provider once per configuration at T <= {COMPILE_SEQ_LEN} (fills the compilers' caches; "
        "with BENCH_WARM_DIR set, leaves a marker per provider and configuration built), time nothing",
    )
    parser.add_argument("--list", action="store_true", help="print the providers and configurations, run nothing")
    parser.epilog = (
        "--input-size accepts h (equal to the hidden size); --dtype accepts "
        f"{', '.join(PRECISIONS)} (fp32: TF32 allowed, fp32ieee: not) or full dtype names."
    )
    return parser.parse_args(argv)


def _fraction(text: str) -> tuple[int, int]:
    index, count = (int(part) for part in text.split("/"))
    if not 0 <= index < count:
        raise SystemExit(f"{text}: expected I/N with 0 <= I < N")
    return index, count


def select_configs(args: argparse.Namespace, packed: bool, device: torch.device) -> tuple[str, list[BenchConfig]]:
    """The preset's name and the configurations ``args`` choose (axis overrides, --max-configs, --part, --shard)."""
    preset = args.preset or ("quick" if device.type == "cuda" else "cpu")
    overrides = {axis: parse(getattr(args, axis)) for _, axis, parse in _AXIS_FLAGS if getattr(args, axis)}
    part, parts = _fraction(args.part)
    shard, shards = _fraction(args.shard)
    configs = build_configs(PRESETS[preset], overrides, packed=packed)[: args.max_configs][part::parts]
    return preset, configs[shard::shards]


def output_path(text: str | None) -> Path:
    """Where the CSV goes: ``--out`` as given, a bare file name under bench/results/, default timestamped."""
    if text is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return RESULTS_DIR / f"sweep-{stamp}.csv"
    return RESULTS_DIR / text if Path(text).name == text else Path(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_interpreter_without_cuda()
    from bench import providers  # imports triton_lstm: only after the interpreter switch

    device = bench_device()
    available = providers.provider_names()
    requested = tuple(args.providers.split(",")) if args.providers else available
    excluded = tuple(args.exclude_providers.split(",")) if args.exclude_providers else ()
    modes = tuple(args.modes.split(","))
    for choice, allowed, what in (
        (requested + excluded, available, "provider"),
        (modes, MODES, "mode"),
    ):
        unknown = [value for value in choice if value not in allowed]
        if unknown:
            raise SystemExit(f"unknown {what}(s) {unknown}; choose from {', '.join(allowed)}")
    # torch first: the others' speedups need it
    names = tuple(name for name in available if name in requested and name not in excluded)
    packed = providers.accepts_packed(device)
    preset, configs = select_configs(args, packed, device)

    if args.list:
        _print_list(providers, names, modes, preset, configs, packed, device)
        return 0
    if args.compile_only:
        return _compile_only(providers, names, modes, configs, device, args.seed)

    out = output_path(args.out)
    machine = describe_machine(device)
    _log(f"{machine.device} | torch {machine.torch_version} | triton {machine.triton_version} | {machine.git_commit}")
    _log(f"preset {preset}: {len(configs)} configurations x {len(names)} providers x {len(modes)} modes -> {out}")
    _log(f"packed rows: {'yes' if packed else 'no (triton_lstm.LSTM does not take a PackedSequence)'}")
    for name in names:
        reason = providers.PROVIDERS[name].unavailable()
        if reason:
            _log(f"provider {name}: every row skipped: {reason}")
    if machine.note:
        _log(f"NOTE: {machine.note}")
    peaks = measure_peaks(device, sorted({config.dtype for config in configs}))
    for dtype, value in peaks.matmul_flops.items():
        _log(f"matmul peak {dtype}: {value / 1e12:.1f} TFLOP/s")
    _log(f"copy bandwidth: {peaks.bandwidth / 1e9:.0f} GB/s")

    deadline = time.monotonic() + args.time_budget if args.time_budget is not None else float("inf")
    counts = {"ok": 0, "error": 0, "skipped": 0}
    sweep = _Sweep(providers, device, machine, peaks, deadline, args.seed)
    with ResultWriter(out) as writer, Progress(len(configs) * len(names) * len(modes), "sweep") as progress:
        for config in configs:
            for row in sweep.rows(config, names, modes):
                writer.write(row)
                counts[row["status"]] += 1
                progress.update(f"{config.id} {row['provider']} {row['mode']}: {row['status']}")
    _log(f"wrote {out}: {counts['ok']} ok, {counts['error']} errors, {counts['skipped']} skipped")
    return 0


def _print_list(providers, names, modes, preset, configs, packed, device) -> None:
    """Every provider (available, or why not), the configurations and a rough H200 time estimate."""
    print("providers:")
    for name in names:
        provider = providers.PROVIDERS[name]
        reason = provider.unavailable()
        print(f"  {name:18} {'SKIPPED: ' + reason if reason else 'available'} | {provider.description}")
    print(f"modes: {', '.join(modes)}\npacked input accepted: {packed}")
    print(f"preset {preset}: {len(configs)} configurations")
    print("\n".join(config.id for config in configs))

    def runs(name, config):
        # On a GPU kernel="auto" runs the persistent or the per-step kernel, measured in their own rows.
        if name == "triton_auto" and {"triton_persistent", "triton_step"} <= set(names):
            return False
        return providers.PROVIDERS[name].unsupported(config, torch.device("cuda")) is None

    seconds = sweep_seconds(configs, names, modes, runs)
    print(f"estimated timed phase on an H200 (rough, compilation excluded; bench/estimate.py): {seconds:.0f} s")


def _compile_only(providers, names, modes, configs, device, seed) -> int:
    """Call every provider once per configuration and mode at a short sequence length; record what built."""
    failures = 0
    with Progress(len(configs) * len(names), "compile") as progress:
        for full in configs:
            config = replace(full, seq_len=min(full.seq_len, COMPILE_SEQ_LEN))
            reference = providers.make_reference(config, device, seed)
            workload = providers.Workload.draw(config, device, seed)
            for name in names:
                provider = providers.PROVIDERS[name]
                reason = provider.unavailable() or provider.unsupported(config, device)
                twin = providers.duplicate_of(name, config, device, names)
                if reason is None and twin is not None:
                    reason = f"runs the same kernel as {twin}"
                status = f"skipped: {reason}" if reason else "ok"
                if not reason:
                    start = time.monotonic()
                    try:
                        with _precision(config):
                            module = providers.build_provider(name, reference, config, device)
                            for mode in modes:
                                providers.make_call(module, workload, mode)()
                            synchronize(device)
                        providers.mark_warm(name, full)
                        status = f"ok in {time.monotonic() - start:.1f} s"
                    except Exception as error:
                        failures += 1
                        status = f"error: {type(error).__name__}: {' '.join(str(error).split())[:200]}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                progress.update(f"{full.id} {name}: {status}")
    _log(f"compiled {len(configs)} configurations x {len(names)} providers: {failures} failed")
    return 0


def _precision(config: BenchConfig):
    """torch's float32 flags for this configuration (TF32 on or off) around a provider's calls."""
    if config.dtype != "float32":
        return contextlib.nullcontext()
    return float32_matmul_precision(config.tf32)


class _Sweep:
    """Measures every (provider, mode) of one configuration at a time and makes the CSV rows."""

    def __init__(self, providers, device: torch.device, machine: Machine, peaks: HardwarePeaks, deadline, seed):
        self.providers = providers
        self.device = device
        self.machine = machine
        self.peaks = peaks
        self.deadline = deadline
        self.seed = seed
        self._errors_seen = set()

    def rows(self, config: BenchConfig, names, modes):
        """Yield one row per (provider, mode) of ``config``, in order."""
        providers = self.providers
        reference = providers.make_reference(config, self.device, self.seed)
        workload = providers.Workload.draw(config, self.device, self.seed)
        expected = None
        if time.monotonic() <= self.deadline:
            try:
                with _precision(config):
                    expected = providers.make_call(reference, workload, "forward")()
            except Exception:  # torch itself fails (e.g. a dtype it lacks here): no max_abs_err for this config
                expected = None
        torch_ms = {}
        for name in names:
            module = None
            reason = providers.skip_reason(name, config, self.device)
            twin = providers.duplicate_of(name, config, self.device, names)
            if reason is None and twin is not None:
                reason = f"runs the same kernel as {twin} here (see its rows)"
            for mode in modes:
                row = {**self._row_base(config), "provider": name, "mode": mode}
                if reason is not None:
                    yield {**row, "status": "skipped", "reason": reason}
                    continue
                if time.monotonic() > self.deadline:
                    yield {**row, "status": "skipped", "reason": "time budget spent (--time-budget)"}
                    continue
                try:
                    with _precision(config):
                        module = module or providers.build_provider(name, reference, config, self.device)
                        # On the CPU the numbers check the pipeline: one timed call is enough.
                        min_reps = 3 if self.device.type == "cuda" else 1
                        call = providers.make_call(module, workload, mode)
                        timing, output = measure(call, self.device, min_reps=min_reps)
                except Exception as error:
                    yield {**row, "status": "error", "error": self._describe(error, config, name, mode)}
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                if name == providers.TORCH:
                    torch_ms[mode] = timing.median_ms
                row.update(variant=getattr(module, "variant", ""))
                row.update(status="ok", **self._metrics(config, mode, timing, torch_ms.get(mode)))
                if expected is not None:
                    row["max_abs_err"] = (output.float() - expected.float()).abs().max().item()
                yield row
            del module

    def _row_base(self, config: BenchConfig) -> dict:
        return {"schema_version": SCHEMA_VERSION, **self.machine.as_dict(), "config": config.id, **config.columns()}

    def _metrics(self, config: BenchConfig, mode: str, timing: Timing, torch_ms: float | None) -> dict:
        seconds = timing.median_ms * 1e-3
        flop, nbytes = flops(config, mode), bytes_moved(config, mode)
        peak = self.peaks.matmul_flops[config.dtype]
        floor = floor_seconds(flop, nbytes, peak, self.peaks.bandwidth)
        return {
            "reps": timing.reps,
            "median_ms": timing.median_ms,
            "p20_ms": timing.p20_ms,
            "p80_ms": timing.p80_ms,
            "first_call_s": timing.first_call_s,
            "peak_mem_mb": timing.peak_mem_mb,
            "tokens": config.tokens,
            "tokens_per_s": config.tokens / seconds,
            "gflop": flop / 1e9,
            "gbyte": nbytes / 1e9,
            "tflops": flop / seconds / 1e12,
            "peak_tflops": peak / 1e12,
            "bandwidth_gbs": self.peaks.bandwidth / 1e9,
            "floor_ms": floor * 1e3,
            "floor_fraction": floor / seconds,
            "speedup_vs_torch": torch_ms / timing.median_ms if torch_ms else None,
        }

    def _describe(self, error: Exception, config: BenchConfig, name: str, mode: str) -> str:
        """The error as one line for the CSV; its traceback goes to the log the first time it is seen."""
        text = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        if text not in self._errors_seen:
            self._errors_seen.add(text)
            _log(f"error in {config.id} {name} {mode}:\n{''.join(traceback.format_exception(error))}")
        return text


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
