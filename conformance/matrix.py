"""The configuration matrix: cases, readable ids, and a pairwise (all-pairs) design.

The full product of the mode factors at every dtype is thousands of interpreter runs. By default the suite runs
the full product at float32 and an all-pairs design at the other dtypes (every pair of factor values appears in
at least one case); ``--full-matrix`` runs the full product at every dtype.
"""

import itertools
from dataclasses import dataclass, replace

import torch

DTYPE_NAMES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES = tuple(DTYPE_NAMES)

# Factor values of the mode space; sizes are kept small and awkward (odd T, odd B, H not a power of two).
FACTORS = {
    "num_layers": (1, 2, 3),
    "bidirectional": (False, True),
    "batch_first": (False, True),
    "bias": (True, False),
    "proj_size": (0, 3),
    "hx": (True, False),
}


@dataclass(frozen=True)
class Case:
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0
    hx: bool = True
    dtype: torch.dtype = torch.float32
    seq_len: int = 5
    batch: int = 3
    input_size: int = 4
    hidden_size: int = 6
    unbatched: bool = False
    kernel: str = "step"

    @property
    def id(self) -> str:
        parts = [
            self.kernel,
            f"L{self.num_layers}",
            "bi" if self.bidirectional else "uni",
            "bf" if self.batch_first else "sf",
            "bias" if self.bias else "nobias",
            f"proj{self.proj_size}",
            "hx" if self.hx else "nohx",
            DTYPE_NAMES[self.dtype],
            f"T{self.seq_len}",
            "unbatched" if self.unbatched else f"B{self.batch}",
            f"I{self.input_size}",
            f"H{self.hidden_size}",
        ]
        return "-".join(parts)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def module_kwargs(self) -> dict:
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "batch_first": self.batch_first,
            "bidirectional": self.bidirectional,
            "proj_size": self.proj_size,
        }


def _pairs_covered(row: dict, names: list, pairs: frozenset) -> int:
    return sum(((a, row[a]), (b, row[b])) in pairs for a, b in itertools.combinations(names, 2))


def all_pairs(factors: dict) -> list[dict]:
    """A greedy all-pairs design: every pair of values of any two factors appears in some row."""
    names = list(factors)
    uncovered = {
        ((a, va), (b, vb)) for a, b in itertools.combinations(names, 2) for va in factors[a] for vb in factors[b]
    }
    candidates = [dict(zip(names, values, strict=True)) for values in itertools.product(*factors.values())]
    rows = []
    while uncovered:
        best = max(candidates, key=lambda row, todo=frozenset(uncovered): _pairs_covered(row, names, todo))
        rows.append(best)
        uncovered -= {((a, best[a]), (b, best[b])) for a, b in itertools.combinations(names, 2)}
    return rows


def full_product(factors: dict) -> list[dict]:
    return [dict(zip(factors, values, strict=True)) for values in itertools.product(*factors.values())]


KERNELS = ("step", "persistent")


def mode_cases(full: bool) -> list[Case]:
    """The mode matrix, for each kernel: full product at fp32, pairwise at the other dtypes (full everywhere if
    ``full``)."""
    cases = []
    for kernel in KERNELS:
        cases += [Case(**row, dtype=torch.float32, kernel=kernel) for row in full_product(FACTORS)]
        for dtype in DTYPES[1:]:
            rows = full_product(FACTORS) if full else all_pairs(FACTORS)
            cases += [Case(**row, dtype=dtype, kernel=kernel) for row in rows]
    return cases


def shape_cases() -> list[Case]:
    """Awkward sizes, each at every dtype: T=1, B=1, unbatched, non-power-of-two sizes, several kernel tiles."""
    base = [
        Case(seq_len=1),
        Case(batch=1, num_layers=2, bidirectional=True),
        Case(seq_len=1, batch=1, proj_size=2, hx=False),
        Case(unbatched=True, num_layers=2, bidirectional=True, proj_size=3),
        Case(unbatched=True, hx=False, batch_first=True),
        Case(input_size=9, hidden_size=17, seq_len=4, bidirectional=True),
        Case(input_size=1, hidden_size=5, seq_len=2, num_layers=2),
        # More than one batch tile and hidden tile under the interpreter's blocks (16 x 64), so that the persistent
        # kernel's single program loops over several unit and column tiles.
        Case(batch=20, hidden_size=70, input_size=8, seq_len=3, proj_size=66, bidirectional=True),
    ]
    return [replace(case, dtype=dtype, kernel=kernel) for case in base for dtype in DTYPES for kernel in KERNELS]


def model_size_cases(on_gpu: bool) -> list[Case]:
    """Sizes of real models, for each kernel: on a GPU the persistent kernel's groups of many programs meeting at
    grid barriers, with W_hh on chip (H_out <= 256) and streamed, several batch tiles, projection and two
    directions. The interpreter runs one program per group, so on the CPU one smaller case (three unit tiles) stands
    in; the GPU sizes would take minutes there."""
    if on_gpu:
        base = [
            Case(batch=16, seq_len=33, input_size=256, hidden_size=256, dtype=torch.float16),
            # Sequence lengths divisible by 16 too: Triton specialises integer arguments on that.
            Case(batch=16, seq_len=128, input_size=256, hidden_size=256),
            Case(batch=40, seq_len=64, input_size=64, hidden_size=768, dtype=torch.float16, hx=False),
            Case(batch=16, seq_len=20, input_size=32, hidden_size=512, bidirectional=True, dtype=torch.bfloat16),
            Case(batch=5, seq_len=9, input_size=96, hidden_size=1024, proj_size=256, num_layers=2, bidirectional=True),
        ]
    else:
        base = [Case(batch=17, seq_len=3, input_size=8, hidden_size=130, bidirectional=True)]
    return [replace(case, kernel=kernel) for case in base for kernel in KERNELS]
