"""``python -m bench.report RESULTS.csv [MORE.csv ...] [--floor FLOOR.csv] [--compare OLD.csv] --out-dir DIR``: sweeps'
CSVs as tables and plots.

Writes DIR/report.md and DIR/report.png. The Markdown: machine, measured peaks; per mode, median ms of every
provider with its speedup over torch.nn.LSTM; the ratios of every row to cuDNN (the ``torch`` provider), to the best
peer (the fastest provider that is not ours: torch, compiled_cell, flashrnn, naive) and to the step-latency floor
(``python -m bench.floor``'s CSV, ``--floor``); skipped rows and their reasons; errors; full details; with
--compare an old-vs-new table. The figure: per axis of the sweep (B, H, T, layers, directions, precision, packed),
ours against every peer on the slice of configurations that varies that axis alone, with the latency floor. The
plots need matplotlib; without it the report says so and the tables are still written.

Several CSVs are merged (``bench.results.merge_results``: a later file's row replaces an earlier one's for the same
configuration, provider and mode), so a rerun of one provider can be reported with the sweep it completes.
"""

import argparse
import math
import sys
from pathlib import Path

from bench.flops import MODES
from bench.results import latency_floor_ms, merge_results, number, read_floor, read_results

Rows = list[dict[str, str]]
FIGURE_NAME = "report.png"
OURS_PREFIX = "triton_"
TORCH = "torch"
# Axes of the per-axis plots: (label, the row's value along it).
AXES = (
    ("batch", lambda row: int(row["batch"])),
    ("hidden size", lambda row: int(row["hidden_size"])),
    ("sequence length", lambda row: int(row["seq_len"])),
    ("layers", lambda row: int(row["num_layers"])),
    ("directions", lambda row: 2 if row["bidirectional"] == "True" else 1),
    ("precision", lambda row: precision_name(row)),
    ("packed", lambda row: row["packed"] == "True"),
)
_SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}
_PRECISION_ORDER = ("fp16", "bf16", "fp32", "fp32ieee", "fp64")


def precision_name(row: dict[str, str]) -> str:
    """fp16, bf16, fp32 (TF32 allowed, or a file of schema 1 where torch's defaults applied), fp32ieee, fp64."""
    return _SHORT.get(row["dtype"], row["dtype"]) + ("ieee" if row.get("fp32_precision") == "ieee" else "")


def _unique(rows: Rows, column: str) -> list[str]:
    """The column's distinct values in order of first appearance."""
    return list(dict.fromkeys(row[column] for row in rows))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return [*out, ""]


def _ok(rows: Rows) -> Rows:
    return [row for row in rows if row["status"] == "ok"]


def is_ours(provider: str) -> bool:
    return provider.startswith(OURS_PREFIX)


class Ratios:
    """Per (config, mode): cuDNN's time, the best peer, the latency floor; and each row's ratios to them."""

    def __init__(self, rows: Rows, floors: dict | None):
        self.torch_ms: dict[tuple[str, str], float] = {}
        self.best_peer: dict[tuple[str, str], tuple[str, float]] = {}
        self.floor_ms: dict[tuple[str, str], float] = {}
        for row in _ok(rows):
            key = (row["config"], row["mode"])
            ms = number(row, "median_ms")
            if row["provider"] == TORCH:
                self.torch_ms[key] = ms
            if not is_ours(row["provider"]) and (key not in self.best_peer or ms < self.best_peer[key][1]):
                self.best_peer[key] = (row["provider"], ms)
            if floors and key not in self.floor_ms:
                floor = latency_floor_ms(row, floors)
                if floor is not None:
                    self.floor_ms[key] = floor

    def of(self, row: dict[str, str]) -> dict[str, float | str | None]:
        """speedup over cuDNN and over the best peer (> 1: faster), and time over the latency floor (>= 1)."""
        key = (row["config"], row["mode"])
        ms = number(row, "median_ms")
        torch_ms = self.torch_ms.get(key)
        best = self.best_peer.get(key)
        floor = self.floor_ms.get(key)
        return {
            "vs_cudnn": torch_ms / ms if torch_ms and ms else None,
            "best_peer": best[0] if best else None,
            "vs_best_peer": best[1] / ms if best and ms else None,
            "floor_ms": floor,
            "x_floor": ms / floor if floor and ms else None,
        }


def _machine_section(rows: Rows, title: str) -> list[str]:
    lines = [f"**{title}**", ""]
    for column in ("device", "torch_version", "triton_version", "python_version", "cuda_version", "git_commit", "env"):
        lines.append(f"- {column}: {', '.join(value or '–' for value in _unique(rows, column))}")
    lines.append(f"- timestamp: {', '.join(_unique(rows, 'timestamp'))}")
    ok = _ok(rows)
    peaks = {row["dtype"]: number(row, "peak_tflops") for row in ok if number(row, "peak_tflops") is not None}
    if peaks:
        peak_text = ", ".join(f"{dtype} {_fmt(value)}" for dtype, value in peaks.items())
        bandwidth = _fmt(next((number(row, "bandwidth_gbs") for row in ok if row["bandwidth_gbs"]), None))
        lines.append(f"- measured matmul peak (TFLOP/s): {peak_text}; copy bandwidth {bandwidth} GB/s")
    counts = {status: sum(row["status"] == status for row in rows) for status in ("ok", "error", "skipped")}
    lines.append(f"- rows: {counts['ok']} ok, {counts['error']} errors, {counts['skipped']} skipped")
    missing = _missing(rows)
    if missing:
        lines.append(
            f"- not measured at all (a run stopped before writing them): {len(missing)} (config, provider, mode), "
            f"e.g. {', '.join(' '.join(item) for item in missing[:3])}"
        )
    return [*lines, ""]


def _missing(rows: Rows) -> list[tuple[str, str, str]]:
    """(config, provider, mode) with no row although that configuration, provider and mode each appear."""
    present = {(row["config"], row["provider"], row["mode"]) for row in rows}
    configs, providers, modes = _unique(rows, "config"), _unique(rows, "provider"), _unique(rows, "mode")
    return [(c, p, m) for c in configs for p in providers for m in modes if (c, p, m) not in present]


def _summary_tables(rows: Rows, ratios: Ratios) -> list[str]:
    """Per mode: configurations down, providers across, median ms with the speedup over torch."""
    lines = []
    providers = _unique(rows, "provider")
    for mode in MODES:
        mode_rows = [row for row in rows if row["mode"] == mode]
        if not mode_rows:
            continue
        cells = {(row["config"], row["provider"]): row for row in mode_rows}
        body = []
        for config in _unique(mode_rows, "config"):
            line = [config]
            for provider in providers:
                line.append(_summary_cell(cells.get((config, provider)), ratios))
            body.append(line)
        lines += [f"## {mode}: median ms (speedup over torch)", "", *_table(["config", *providers], body)]
    return lines


def _summary_cell(row: dict[str, str] | None, ratios: Ratios) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return row["status"]
    speedup = ratios.of(row)["vs_cudnn"]
    text = _fmt(number(row, "median_ms"))
    return text if row["provider"] == TORCH or speedup is None else f"{text} ({_fmt(speedup)}x)"


def _ratio_tables(rows: Rows, ratios: Ratios) -> list[str]:
    """Per mode, every measured row: its time, its speedup over cuDNN and over the best peer, and how many times
    the latency floor it takes."""
    lines = []
    header = ["config", "provider", "variant", "median ms", "vs cuDNN", "best peer", "vs best peer", "floor ms"]
    header.append("x floor")
    for mode in MODES:
        body = []
        for row in _ok(rows):
            if row["mode"] != mode:
                continue
            r = ratios.of(row)
            best = ratios.best_peer.get((row["config"], mode))
            body.append(
                [
                    row["config"],
                    f"**{row['provider']}**" if is_ours(row["provider"]) else row["provider"],
                    row.get("variant") or "",
                    _fmt(number(row, "median_ms")),
                    _ratio(r["vs_cudnn"]),
                    f"{best[0]} {_fmt(best[1])}" if best else "–",
                    _ratio(r["vs_best_peer"]),
                    _fmt(r["floor_ms"]),
                    _ratio(r["x_floor"]),
                ]
            )
        if body:
            lines += [
                f"## {mode}: ratios to cuDNN, to the best peer and to the latency floor",
                "",
                "vs cuDNN (the torch provider: cuDNN on a GPU), vs best peer (the fastest provider that is not "
                "ours): that time over this row's, above 1 where this row is faster; x floor: this row's time over "
                "the step-latency floor (`python -m bench.floor`: layers x T x one barrier and h broadcast a step, "
                "twice that forward and backward).",
                "",
                *_table(header, body),
            ]
    return lines


def _skipped(rows: Rows) -> list[str]:
    """Skipped rows grouped by provider and reason."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row["status"] == "skipped":
            groups.setdefault((row["provider"], row.get("reason") or "(no reason recorded)"), []).append(row["config"])
    body = []
    for (provider, reason), configs in groups.items():
        unique = list(dict.fromkeys(configs))
        example = ", ".join(unique[:2]) + (", ..." if len(unique) > 2 else "")
        body.append([provider, reason.replace("|", "/"), str(len(configs)), example])
    return ["## Skipped", "", *_table(["provider", "reason", "rows", "configs"], body)] if body else []


def _details(rows: Rows) -> list[str]:
    header = ["config", "provider", "mode", "median ms", "p20-p80 ms", "tokens/s", "TFLOP/s", "hw floor %"]
    header += ["speedup", "peak MiB", "first call s", "max err"]
    body = []
    for row in _ok(rows):
        fraction = number(row, "floor_fraction")
        body.append(
            [
                row["config"],
                row["provider"],
                row["mode"],
                _fmt(number(row, "median_ms")),
                f"{_fmt(number(row, 'p20_ms'))}-{_fmt(number(row, 'p80_ms'))}",
                _fmt(number(row, "tokens_per_s")),
                _fmt(number(row, "tflops")),
                _fmt(None if fraction is None else 100 * fraction),
                _fmt(number(row, "speedup_vs_torch")),
                _fmt(number(row, "peak_mem_mb")),
                _fmt(number(row, "first_call_s")),
                _fmt(number(row, "max_abs_err"), 2),
            ]
        )
    return ["## Details", "", *_table(header, body)] if body else []


def _errors(rows: Rows) -> list[str]:
    failed = [row for row in rows if row["status"] == "error"]
    body = [[row["config"], row["provider"], row["mode"], row["error"].replace("|", "/")] for row in failed]
    return ["## Errors", "", *_table(["config", "provider", "mode", "error"], body)] if body else []


def compare_pairs(new: Rows, old: Rows) -> list[tuple[dict, dict]]:
    """(old row, new row) for every (config, provider, mode) measured ok in both, in the new file's order."""
    key = lambda row: (row["config"], row["provider"], row["mode"])  # noqa: E731
    before = {key(row): row for row in _ok(old)}
    return [(before[key(row)], row) for row in _ok(new) if key(row) in before]


def _comparison(new: Rows, old: Rows) -> list[str]:
    pairs = compare_pairs(new, old)
    lines = ["## Old vs new", "", *_machine_section(old, "old"), *_machine_section(new, "new")]
    if not pairs:
        return [*lines, "No (config, provider, mode) was measured in both files.", ""]
    speedups: dict[tuple[str, str], list[float]] = {}
    body = []
    for before, after in pairs:
        old_ms, new_ms = number(before, "median_ms"), number(after, "median_ms")
        speedups.setdefault((after["provider"], after["mode"]), []).append(old_ms / new_ms)
        body.append(
            [after["config"], after["provider"], after["mode"], _fmt(old_ms), _fmt(new_ms), f"{old_ms / new_ms:.2f}x"]
        )
    means = [
        [provider, mode, f"{_fmt(math.exp(sum(map(math.log, values)) / len(values)))}x", str(len(values))]
        for (provider, mode), values in speedups.items()
    ]
    lines += ["Geometric mean speedup (old ms / new ms):", "", *_table(["provider", "mode", "speedup", "n"], means)]
    lines += _table(["config", "provider", "mode", "old ms", "new ms", "speedup"], body)
    return lines


def render_markdown(rows: Rows, source: str, old: Rows | None, figure_text: str, floors: dict | None = None) -> str:
    """The whole report as Markdown; ``figure_text`` is the image link, or why there is none."""
    ratios = Ratios(rows, floors)
    lines = ["# LSTM benchmark report", "", f"Source: `{source}`", ""]
    notes = [note for note in _unique(rows, "note") if note]
    if notes:
        lines += [f"> **{note}**" for note in notes] + [""]
    lines += _machine_section(rows, "Machine")
    if floors is None:
        lines += ["_No latency floor given (`--floor`, from `python -m bench.floor`): the x floor columns are empty._"]
        lines += [""]
    lines += [figure_text, ""]
    lines += _summary_tables(rows, ratios) + _ratio_tables(rows, ratios) + _skipped(rows) + _errors(rows)
    lines += _details(rows)
    if old is not None:
        lines += _comparison(rows, old)
    return "\n".join(lines)


def axis_slices(rows: Rows) -> list[tuple[str, str, list]]:
    """For each axis: (axis label, what the slice holds fixed, its configurations' rows sorted along the axis).

    A slice is a set of configurations equal in everything but that axis (the input size counted as "= H" where
    it equals the hidden size); of an axis's slices the one with the most values, the first in the file on a tie.
    Axes with fewer than two values are left out.
    """
    ok = _ok(rows)
    slices = []
    for index, (label, value) in enumerate(AXES):
        groups: dict[tuple, dict] = {}
        for row in ok:
            rest = tuple(v(row) for i, (_, v) in enumerate(AXES) if i != index)
            rest += ("h" if row["input_size"] == row["hidden_size"] else row["input_size"], row["proj_size"])
            groups.setdefault(rest, {}).setdefault(value(row), []).append(row)
        best = max(groups.values(), key=len, default={})
        if len(best) < 2:
            continue
        some = next(iter(best.values()))[0]
        fixed = " ".join(
            f"{name}={v(some)}" for i, (name, v) in enumerate(AXES) if i != index
        )  # e.g. batch=16 hidden size=1024 ...
        ordered = sorted(best.items(), key=lambda item: _axis_order(item[0]))
        slices.append((label, fixed, ordered))
    return slices


def _axis_order(value):
    """Numbers in order, precisions from fp16 to fp64, False before True."""
    if isinstance(value, str):
        return (1, _PRECISION_ORDER.index(value) if value in _PRECISION_ORDER else len(_PRECISION_ORDER), value)
    return (0, value, "")


def plot(rows: Rows, old: Rows | None, path: Path, floors: dict | None = None) -> str:
    """Draw the per-axis plots (and old vs new) into one PNG at ``path``; returns the Markdown that shows it, or
    why it was not drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "_Plots skipped: matplotlib is not installed (`pip install matplotlib`)._"
    ok = _ok(rows)
    if not ok:
        return "_Plots skipped: no successful measurement._"
    ratios = Ratios(rows, floors)
    slices = axis_slices(rows)
    pairs = compare_pairs(rows, old) if old is not None else []
    plot_rows = max(1, len(slices)) + bool(pairs)
    colors = {provider: f"C{index}" for index, provider in enumerate(_unique(rows, "provider"))}  # same everywhere
    figure, axes = plt.subplots(plot_rows, len(MODES), figsize=(7 * len(MODES), 3.6 * plot_rows), squeeze=False)
    for column, mode in enumerate(MODES):
        for line, (label, fixed, ordered) in enumerate(slices):
            _plot_axis(axes[line][column], ordered, mode, colors, ratios)
            axes[line][column].set_title(f"{mode} vs {label}\n({fixed})", fontsize=8)
        if not slices:
            axes[0][column].set_title(f"{mode}: no axis with two values")
        if pairs:
            configs = _unique(ok, "config")
            mode_pairs = [(before, after) for before, after in pairs if after["mode"] == mode]
            _plot_comparison(axes[-1][column], mode_pairs, configs, colors)
            axes[-1][column].set_title(f"{mode}: old ms / new ms")
    notes = [note for note in _unique(rows, "note") if note]
    devices = ", ".join(_unique(rows, "device"))
    figure.suptitle(
        f"{devices}: median ms per call, ours (solid) vs peers (dashed)" + (f"\n{notes[0]}" if notes else "")
    )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"![plots]({path.name})"


def _plot_axis(ax, ordered, mode: str, colors: dict[str, str], ratios: Ratios) -> None:
    """Median ms of every provider along one axis (x: the axis's values in order), and the latency floor."""
    labels = [str(value) for value, _ in ordered]
    series: dict[str, list[tuple[int, float]]] = {}
    floor_points = []
    for x, (_, rows) in enumerate(ordered):
        for row in rows:
            if row["mode"] != mode:
                continue
            series.setdefault(row["provider"], []).append((x, number(row, "median_ms")))
            floor = ratios.floor_ms.get((row["config"], mode))
            if floor is not None and (x, floor) not in floor_points:
                floor_points.append((x, floor))
    for provider, points in series.items():
        style = "-" if is_ours(provider) else "--"
        ax.plot(*zip(*points, strict=True), style, marker="o", linewidth=1, label=provider, color=colors[provider])
    if floor_points:
        ax.plot(*zip(*floor_points, strict=True), ":", color="black", linewidth=1.2, label="latency floor")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms", fontsize=8)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def _plot_comparison(ax, pairs, configs: list[str], colors: dict[str, str]) -> None:
    for provider in _unique([after for _, after in pairs], "provider"):
        points = [
            (configs.index(after["config"]), number(before, "median_ms") / number(after, "median_ms"))
            for before, after in pairs
            if after["provider"] == provider
        ]
        ax.plot(*zip(*points, strict=True), marker="o", linewidth=0.8, label=provider, color=colors[provider])
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels(configs, rotation=60, ha="right", fontsize=6)
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="sweep CSVs (merged; later files win)")
    parser.add_argument("--floor", type=Path, help="python -m bench.floor's CSV: adds the latency-floor ratios")
    parser.add_argument("--compare", type=Path, help="an older sweep's CSV: adds an old-vs-new table and plot")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for report.md and report.png")
    args = parser.parse_args(argv)
    rows = merge_results(args.results)
    old = read_results(args.compare) if args.compare else None
    floors = read_floor(args.floor) if args.floor else None
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figure_text = plot(rows, old, args.out_dir / FIGURE_NAME, floors)
    report = args.out_dir / "report.md"
    source = " ".join(str(path) for path in args.results)
    report.write_text(render_markdown(rows, source, old, figure_text, floors))
    print(f"wrote {report}" + ("" if figure_text.startswith("_") else f" and {args.out_dir / FIGURE_NAME}"))
    if figure_text.startswith("_"):
        print(figure_text.strip("_"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
