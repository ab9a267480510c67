"""Benchmark configurations: one LSTM problem size each, the presets of the sweep, and the pytest set."""

import itertools
from dataclasses import asdict, dataclass, replace

import torch

DTYPE_SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}
# The sweep's precisions: a dtype, and for float32 whether TF32 is allowed (torch's flags are set around every
# provider's call; "fp32" is torch's own default for its LSTM: cuDNN multiplies in TF32).
PRECISIONS = {
    "fp16": ("float16", True),
    "bf16": ("bfloat16", True),
    "fp32": ("float32", True),
    "fp32ieee": ("float32", False),
    "fp64": ("float64", True),
}


def precision(name: str) -> tuple[str, bool]:
    """(dtype, tf32) of a precision name: a key of PRECISIONS or a dtype's full name (float32 allows TF32)."""
    if name in PRECISIONS:
        return PRECISIONS[name]
    if name in DTYPE_SHORT:
        return name, True
    raise ValueError(f"unknown precision {name!r}; choose from {', '.join([*PRECISIONS, *DTYPE_SHORT])}")


@dataclass(frozen=True)
class BenchConfig:
    """One problem: an LSTM's shape and dtype, and its input (padded, or packed with unequal lengths).

    ``tf32`` says whether float32 matrix products may use TF32 (torch's ``fp32_precision`` flags, set around every
    provider's call); it is True for the other dtypes, where it means nothing.
    """

    batch: int
    seq_len: int
    hidden_size: int
    input_size: int
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    dtype: str = "float32"
    packed: bool = False
    tf32: bool = True

    def __post_init__(self):
        if self.dtype != "float32" and not self.tf32:
            object.__setattr__(self, "tf32", True)

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
    def fp32_precision(self) -> str:
        """``tf32`` or ``ieee`` for float32 (the CSV's ``fp32_precision``), empty for the other dtypes."""
        if self.dtype != "float32":
            return ""
        return "tf32" if self.tf32 else "ieee"

    @property
    def precision_name(self) -> str:
        """fp16, bf16, fp32 (TF32 allowed), fp32ieee or fp64."""
        return DTYPE_SHORT.get(self.dtype, self.dtype) + ("" if self.tf32 else "ieee")

    @property
    def id(self) -> str:
        """A readable id, e.g. ``B16-T512-H768-I768-L1-uni-fp16`` (``fp32ieee``: float32 without TF32); the CSV's
        join key."""
        parts = [
            f"B{self.batch}",
            f"T{self.seq_len}",
            f"H{self.hidden_size}",
            f"I{self.input_size}",
            f"L{self.num_layers}",
            "bi" if self.bidirectional else "uni",
            self.precision_name,
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

    def columns(self) -> dict:
        """The configuration's CSV columns (``tf32`` as ``fp32_precision``)."""
        values = self.as_dict()
        del values["tf32"]
        return {**values, "fp32_precision": self.fp32_precision}


# The axes of a grid, in the order the sweep walks them (the first changes slowest). input_size None means
# "equal to hidden_size"; dtype takes the names of PRECISIONS.
AXES = ("dtype", "hidden_size", "batch", "seq_len", "input_size", "num_layers", "bidirectional", "packed")


@dataclass(frozen=True)
class Preset:
    """A sweep: the product of ``axes`` (one tuple of values per name in AXES but ``packed``), then ``extras``.

    Where the LSTMs under test take a PackedSequence, ``packed_axis`` adds a packed copy of every configuration of
    the grid and of ``packed_extras``; extras may also be packed themselves. Without PackedSequence support every
    packed configuration is dropped. ``extras_first`` runs the extras before the grid, so that a sweep cut short by
    its time budget still has them.
    """

    description: str
    axes: dict
    extras: tuple[BenchConfig, ...] = ()
    packed_axis: bool = True
    packed_extras: tuple[BenchConfig, ...] = ()
    extras_first: bool = False


def make_config(
    dtype="fp16", hidden_size=1024, batch=16, seq_len=512, input_size=None, num_layers=1, bidirectional=False,
    packed=False, proj_size=0,
) -> BenchConfig:  # fmt: skip
    """A configuration from axis values: ``dtype`` is a precision name (``fp32ieee``...), ``input_size`` None is H."""
    dtype_name, tf32 = precision(dtype)
    return BenchConfig(
        batch, seq_len, hidden_size, input_size or hidden_size, num_layers, bidirectional, proj_size, dtype_name,
        packed, tf32,
    )  # fmt: skip


def grid(**axes) -> tuple[BenchConfig, ...]:
    """Every combination of the given axes (tuples of values), the other axes at ``make_config``'s defaults:
    fp16, H = I = 1024, B = 16, T = 512, one layer, one direction, padded."""
    names = list(axes)
    return tuple(make_config(**dict(zip(names, values, strict=True))) for values in itertools.product(*axes.values()))


# Sizes of the issue-16 sweep: B 1/16/64/256, H 256/768/1024/2048, T 32/512/2048, 1 to 3 layers, one and two
# directions, fp16/bf16/fp32 (TF32 on and off)/fp64, padded and packed. "quick" touches every value once around
# B = 16, H = 1024, T = 512, fp16 (one GPU run of gpu_check.sh); "core" crosses them with B and H (two runs, with
# --part 0/2 and 1/2). Centre first: a run cut short by its time budget keeps the configurations that matter most.
_QUICK = (
    grid(hidden_size=(1024, 256), batch=(16, 1, 64))
    + grid(batch=(256,))
    + grid(hidden_size=(768, 2048))
    + grid(dtype=("bf16", "fp32", "fp32ieee"))
    + grid(dtype=("fp32",), hidden_size=(256,))
    + grid(dtype=("fp64",), hidden_size=(256,))
    + grid(seq_len=(32, 2048))
    + grid(num_layers=(2, 3))
    + grid(bidirectional=(True,))
    + grid(packed=(True,))
)
_CORE = (
    grid(hidden_size=(256, 768, 1024, 2048), batch=(1, 16, 64, 256))
    + grid(dtype=("bf16", "fp32", "fp32ieee", "fp64"), hidden_size=(256, 1024), batch=(16, 64))
    + grid(seq_len=(32, 2048), hidden_size=(256, 1024))
    + grid(seq_len=(2048,), batch=(1, 64))
    + grid(num_layers=(2, 3), bidirectional=(False, True), hidden_size=(256, 1024))
    + grid(bidirectional=(True,), hidden_size=(256, 1024), batch=(1, 16, 64))
    + grid(packed=(True,), bidirectional=(False, True), hidden_size=(256, 1024))
    + grid(proj_size=(256,))
    + grid(hidden_size=(2048,), proj_size=(512,))
    + grid(input_size=(256,))
)


def _extra(dtype="float16", batch=16, seq_len=512, hidden_size=768, input_size=None, **kwargs) -> BenchConfig:
    return BenchConfig(batch, seq_len, hidden_size, input_size or hidden_size, dtype=dtype, **kwargs)


PRESETS = {
    "cpu": Preset(
        description="tiny sizes for the Triton interpreter: checks the pipeline, measures nothing",
        axes={
            "dtype": ("fp32",),
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
            BenchConfig(2, 4, 8, 8, dtype="float32", tf32=False),
            BenchConfig(2, 4, 8, 8, dtype="float64"),
            BenchConfig(3, 4, 8, 8, bidirectional=True, dtype="float32", packed=True),
        ),
        packed_axis=False,
    ),
    "quick": Preset(
        description="every axis of the issue-16 sweep once around B16 T512 H1024 fp16: one GPU run of gpu_check.sh",
        axes={},
        extras=_QUICK,
        packed_axis=False,
    ),
    "core": Preset(
        description="the issue-16 sweep, each axis crossed with B and H: two GPU runs (--part 0/2, --part 1/2)",
        axes={},
        extras=_CORE,
        packed_axis=False,
    ),
    "full": Preset(
        description="the long GPU sweep (hours): every axis at several values",
        axes={
            "dtype": ("fp16", "bf16", "fp32", "fp32ieee", "fp64"),
            "hidden_size": (128, 256, 512, 768, 1024, 2048),
            "batch": (1, 16, 64, 256),
            "seq_len": (32, 512, 2048),
            "input_size": (None, 256),
            "num_layers": (1, 2, 3),
            "bidirectional": (False, True),
        },
        extras=tuple(
            _extra(dtype=d, hidden_size=h, proj_size=h // 4) for d in ("float16", "float32") for h in (1024, 2048)
        ),
    ),
}
# The axes a preset's grid replaces with --batch, --dtype, ... when it has none of its own: B16 T512 H1024 fp16.
_DEFAULT_AXES = {
    "dtype": ("fp16",),
    "hidden_size": (1024,),
    "batch": (16,),
    "seq_len": (512,),
    "input_size": (None,),
    "num_layers": (1,),
    "bidirectional": (False,),
}


def build_configs(preset: Preset, overrides: dict | None = None, *, packed: bool = False) -> list[BenchConfig]:
    """The preset's configurations, without duplicates, in sweep order.

    ``overrides`` replaces some axes' values (e.g. ``{"batch": (8,)}``, ``{"packed": (False,)}``); the preset's
    extras, which sit outside its grid, are dropped then (a preset without a grid of its own starts from B16 T512
    H1024 fp16). ``packed`` says the LSTMs under test accept a PackedSequence: then packed copies are added as the
    preset says (with overrides, of every configuration, unless the overrides set the packed axis); without it
    every packed configuration is dropped.
    """
    axes = {**(preset.axes or _DEFAULT_AXES), **(overrides or {})} if overrides else dict(preset.axes)
    if axes:
        if not packed:
            axes["packed"] = (False,)
        elif "packed" not in axes:
            axes["packed"] = (False, True) if preset.packed_axis or overrides else (False,)
    grid_configs = []
    if axes:
        for values in itertools.product(*(axes[name] for name in AXES)):
            point = dict(zip(AXES, values, strict=True))
            grid_configs.append(make_config(**point))
    if overrides:
        return list(dict.fromkeys(grid_configs))
    extras = [config for config in preset.extras if packed or not config.packed]
    if packed:
        copies = preset.extras if preset.packed_axis else preset.packed_extras
        extras += [replace(config, packed=True) for config in copies]
    return list(dict.fromkeys(extras + grid_configs if preset.extras_first else grid_configs + extras))


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
