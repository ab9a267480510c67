"""Benchmark configurations: one LSTM problem size each, the presets of the sweep, and the pytest set."""

import itertools
from dataclasses import asdict, dataclass, replace

import torch

DTYPE_SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}


@dataclass(frozen=True)
class BenchConfig:
    """One problem: an LSTM's shape and dtype, and its input (padded, or packed with unequal lengths)."""

    batch: int
    seq_len: int
    hidden_size: int
    input_size: int
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    dtype: str = "float32"
    packed: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Width of h per direction: the projection size, or the hidden size without projection."""
        return self.proj_size or self.hidden_size

    @property
    def id(self) -> str:
        """A readable id, e.g. ``B16-T512-H768-I768-L1-uni-fp16``; the CSV's join key."""
        parts = [
            f"B{self.batch}",
            f"T{self.seq_len}",
            f"H{self.hidden_size}",
            f"I{self.input_size}",
            f"L{self.num_layers}",
            "bi" if self.bidirectional else "uni",
            DTYPE_SHORT.get(self.dtype, self.dtype),
        ]
        if self.proj_size:
            parts.append(f"P{self.proj_size}")
        if self.packed:
            parts.append("packed")
        return "-".join(parts)

    def lengths(self) -> list[int]:
        """Sequence lengths, longest first: all ``seq_len`` when padded; packed, spread evenly down to half."""
        if not self.packed or self.batch == 1:
            return [self.seq_len] * self.batch
        shortest = max(1, self.seq_len // 2)
        return [self.seq_len - (self.seq_len - shortest) * b // (self.batch - 1) for b in range(self.batch)]

    @property
    def tokens(self) -> int:
        """Time steps of real input over the whole batch: T * B padded, the sum of the lengths packed."""
        return sum(self.lengths())

    def as_dict(self) -> dict:
        return asdict(self)


# The axes of a grid, in the order the sweep walks them (the first changes slowest). input_size None means
# "equal to hidden_size".
AXES = ("dtype", "hidden_size", "batch", "seq_len", "input_size", "num_layers", "bidirectional", "packed")


@dataclass(frozen=True)
class Preset:
    """A sweep: the product of ``axes`` (one tuple of values per name in AXES but ``packed``), then ``extras``.

    Where the LSTMs under test take a PackedSequence, ``packed_axis`` adds a packed copy of every configuration;
    without it only ``packed_extras`` get one (the core sweep stays within its time). ``extras_first`` runs the
    extras before the grid, so that a sweep cut short by its time budget still has them.
    """

    description: str
    axes: dict
    extras: tuple[BenchConfig, ...] = ()
    packed_axis: bool = True
    packed_extras: tuple[BenchConfig, ...] = ()
    extras_first: bool = False


def _extra(dtype="float16", batch=16, seq_len=512, hidden_size=768, input_size=None, **kwargs) -> BenchConfig:
    return BenchConfig(batch, seq_len, hidden_size, input_size or hidden_size, dtype=dtype, **kwargs)


PRESETS = {
    "cpu": Preset(
        description="tiny sizes for the Triton interpreter: checks the pipeline, measures nothing",
        axes={
            "dtype": ("float32",),
            "hidden_size": (8,),
            "batch": (2,),
            "seq_len": (4,),
            "input_size": (None,),
            "num_layers": (1, 2),
            "bidirectional": (False, True),
        },
        extras=(
            BenchConfig(2, 4, 8, 8, dtype="bfloat16"),
            BenchConfig(2, 4, 8, 5, dtype="float32"),
            BenchConfig(2, 4, 8, 8, proj_size=4, dtype="float32"),
        ),
        packed_axis=False,
        packed_extras=(BenchConfig(3, 4, 8, 8, bidirectional=True, dtype="float32"),),
    ),
    "core": Preset(
        description="the GPU core sweep (about 4 minutes on one H100/H200)",
        axes={
            "dtype": ("float16", "bfloat16", "float32"),
            "hidden_size": (256, 768, 1024),
            "batch": (1, 16, 64),
            "seq_len": (512,),
            "input_size": (None,),
            "num_layers": (1,),
            "bidirectional": (False,),
        },
        extras=(
            _extra(),  # the headline size, also part of the grid: measured first
            # DESIGN.md's reference point: cuDNN takes about 2.0 ms forward, 5.2 ms forward+backward on an H100.
            _extra(seq_len=1024),
            _extra(bidirectional=True),
            _extra(num_layers=2),
            _extra(num_layers=2, bidirectional=True, dtype="bfloat16"),
            _extra(hidden_size=1024, proj_size=256),
            _extra(hidden_size=1024, input_size=256),
        ),
        packed_axis=False,
        packed_extras=(_extra(), _extra(batch=64, hidden_size=1024, dtype="bfloat16")),
        # Several directions, layers, projection and packing are where the kernels differ most from cuDNN.
        extras_first=True,
    ),
    "full": Preset(
        description="the long GPU sweep (hours): every axis at several values",
        axes={
            "dtype": ("float16", "bfloat16", "float32"),
            "hidden_size": (128, 256, 512, 768, 1024, 2048),
            "batch": (1, 16, 64, 256),
            "seq_len": (128, 1024),
            "input_size": (None, 256),
            "num_layers": (1, 2),
            "bidirectional": (False, True),
        },
        extras=tuple(
            _extra(dtype=d, hidden_size=h, proj_size=h // 4) for d in ("float16", "float32") for h in (1024, 2048)
        ),
    ),
}


def build_configs(preset: Preset, overrides: dict | None = None, *, packed: bool = False) -> list[BenchConfig]:
    """The preset's configurations, without duplicates, in sweep order.

    ``overrides`` replaces some axes' values (e.g. ``{"batch": (8,)}``, ``{"packed": (False,)}``); the preset's
    extras, which sit outside its grid, are dropped then. ``packed`` says the LSTMs under test accept a
    PackedSequence: then packed copies are added as the preset says (with overrides, of every configuration, unless
    the overrides set the packed axis).
    """
    axes = {**preset.axes, **(overrides or {})}
    if not packed:
        axes["packed"] = (False,)
    elif "packed" not in axes:
        axes["packed"] = (False, True) if preset.packed_axis or overrides else (False,)
    grid = []
    for values in itertools.product(*(axes[name] for name in AXES)):
        point = dict(zip(AXES, values, strict=True))
        point["input_size"] = point["input_size"] or point["hidden_size"]
        grid.append(BenchConfig(**point))
    if overrides:
        return list(dict.fromkeys(grid))
    extras = list(preset.extras)
    if packed:
        extras += [
            replace(config, packed=True) for config in (preset.extras if preset.packed_axis else preset.packed_extras)
        ]
    return list(dict.fromkeys(extras + grid if preset.extras_first else grid + extras))


def pytest_configs(on_gpu: bool) -> list[BenchConfig]:
    """The few representative configurations ``pytest bench/`` records: tiny for the interpreter on CPU."""
    if not on_gpu:
        return [
            BenchConfig(2, 4, 8, 8, dtype="float32"),
            BenchConfig(2, 4, 8, 8, num_layers=2, bidirectional=True, dtype="float32"),
            BenchConfig(2, 4, 8, 8, dtype="bfloat16"),
        ]
    return [
        BenchConfig(16, 256, 768, 768, dtype="float16"),
        BenchConfig(64, 256, 1024, 1024, dtype="bfloat16"),
        BenchConfig(16, 256, 512, 512, num_layers=2, bidirectional=True, dtype="float32"),
    ]
