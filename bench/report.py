"""``python -m bench.report RESULTS.csv [--compare OLD.csv] --out-dir DIR``: a sweep's CSV as tables and plots.

Writes DIR/report.md (machine, measured peaks, per-mode tables of median time and speedup over torch.nn.LSTM,
full details, errors; with --compare an old-vs-new table) and DIR/report.png (one figure with every plot). The
plots need matplotlib; without it the report says so and the tables are still written.
"""

import argparse
import math
import sys
from pathlib import Path

from bench.flops import MODES
from bench.results import number, read_results

Rows = list[dict[str, str]]
FIGURE_NAME = "report.png"


def _unique(rows: Rows, column: str) -> list[str]:
    """The column's distinct values in order of first appearance."""
    return list(dict.fromkeys(row[column] for row in rows))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return [*out, ""]


def _ok(rows: Rows) -> Rows:
    return [row for row in rows if row["status"] == "ok"]


def _machine_section(rows: Rows, title: str) -> list[str]:
    lines = [f"**{title}**", ""]
    for column in ("device", "torch_version", "triton_version", "python_version", "cuda_version", "git_commit", "env"):
        lines.append(f"- {column}: {', '.join(value or '–' for value in _unique(rows, column))}")
    lines.append(f"- timestamp: {', '.join(_unique(rows, 'timestamp'))}")
    ok = _ok(rows)
    peaks = {row["dtype"]: row["peak_tflops"] for row in ok}
    if ok:
        peak_text = ", ".join(f"{dtype} {_fmt(float(value))}" for dtype, value in peaks.items())
        bandwidth = _fmt(number(ok[0], "bandwidth_gbs"))
        lines.append(f"- measured matmul peak (TFLOP/s): {peak_text}; copy bandwidth {bandwidth} GB/s")
    counts = {status: sum(row["status"] == status for row in rows) for status in ("ok", "error", "skipped")}
    lines.append(f"- rows: {counts['ok']} ok, {counts['error']} errors, {counts['skipped']} skipped")
    return [*lines, ""]


def _summary_tables(rows: Rows) -> list[str]:
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
                row = cells.get((config, provider))
                line.append(_summary_cell(row))
            body.append(line)
        lines += [f"## {mode}: median ms (speedup over torch)", "", *_table(["config", *providers], body)]
    return lines


def _summary_cell(row: dict[str, str] | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return row["status"]
    speedup = number(row, "speedup_vs_torch")
    text = _fmt(number(row, "median_ms"))
    return text if row["provider"] == "torch" or speedup is None else f"{text} ({_fmt(speedup)}x)"


def _details(rows: Rows) -> list[str]:
    header = ["config", "provider", "mode", "median ms", "p20-p80 ms", "tokens/s", "TFLOP/s", "floor %"]
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


def render_markdown(rows: Rows, source: str, old: Rows | None, figure_text: str) -> str:
    """The whole report as Markdown; ``figure_text`` is the image link, or why there is none."""
    lines = ["# LSTM benchmark report", "", f"Source: `{source}`", ""]
    notes = [note for note in _unique(rows, "note") if note]
    if notes:
        lines += [f"> **{note}**" for note in notes] + [""]
    lines += _machine_section(rows, "Machine")
    lines += [figure_text, ""]
    lines += _summary_tables(rows) + _errors(rows) + _details(rows)
    if old is not None:
        lines += _comparison(rows, old)
    return "\n".join(lines)


def plot(rows: Rows, old: Rows | None, path: Path) -> str:
    """Draw every plot into one PNG at ``path``; returns the Markdown that shows it, or why it was not drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "_Plots skipped: matplotlib is not installed (`pip install matplotlib`)._"
    ok = _ok(rows)
    if not ok:
        return "_Plots skipped: no successful measurement._"
    metrics = [
        ("median_ms", "median ms"),
        ("speedup_vs_torch", "speedup over torch"),
        ("floor_fraction", "fraction of the hardware floor"),
    ]
    pairs = compare_pairs(rows, old) if old is not None else []
    plot_rows = len(metrics) + bool(pairs)
    configs = _unique(ok, "config")
    colors = {provider: f"C{index}" for index, provider in enumerate(_unique(rows, "provider"))}  # same in every plot
    figure, axes = plt.subplots(
        plot_rows, len(MODES), figsize=(max(10, 0.5 * len(configs) * len(MODES)), 3.5 * plot_rows), squeeze=False
    )
    for column, mode in enumerate(MODES):
        mode_rows = [row for row in ok if row["mode"] == mode]
        for line, (metric, label) in enumerate(metrics):
            _plot_metric(axes[line][column], mode_rows, configs, metric, colors)
            axes[line][column].set_title(f"{mode}: {label}")
        if pairs:
            mode_pairs = [(before, after) for before, after in pairs if after["mode"] == mode]
            _plot_comparison(axes[-1][column], mode_pairs, configs, colors)
            axes[-1][column].set_title(f"{mode}: old ms / new ms")
    notes = [note for note in _unique(rows, "note") if note]
    devices = ", ".join(_unique(rows, "device"))
    figure.suptitle(f"{devices}" + (f" — {notes[0]}" if notes else ""))
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"![plots]({path.name})"


def _plot_metric(ax, rows: Rows, configs: list[str], metric: str, colors: dict[str, str]) -> None:
    for provider in _unique(rows, "provider"):
        points = [(configs.index(r["config"]), number(r, metric)) for r in rows if r["provider"] == provider]
        points = [(x, y) for x, y in points if y is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", linewidth=0.8, label=provider, color=colors[provider])
    _config_axis(ax, configs)


def _plot_comparison(ax, pairs, configs: list[str], colors: dict[str, str]) -> None:
    for provider in _unique([after for _, after in pairs], "provider"):
        points = [
            (configs.index(after["config"]), number(before, "median_ms") / number(after, "median_ms"))
            for before, after in pairs
            if after["provider"] == provider
        ]
        ax.plot(*zip(*points, strict=True), marker="o", linewidth=0.8, label=provider, color=colors[provider])
    ax.axhline(1.0, color="grey", linewidth=0.8)
    _config_axis(ax, configs)


def _config_axis(ax, configs: list[str]) -> None:
    """Configurations along x; y on a log scale (every metric spans orders of magnitude across providers)."""
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels(configs, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the sweep's CSV")
    parser.add_argument("--compare", type=Path, help="an older sweep's CSV: adds an old-vs-new table and plot")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for report.md and report.png")
    args = parser.parse_args(argv)
    rows = read_results(args.results)
    old = read_results(args.compare) if args.compare else None
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figure_text = plot(rows, old, args.out_dir / FIGURE_NAME)
    report = args.out_dir / "report.md"
    report.write_text(render_markdown(rows, str(args.results), old, figure_text))
    print(f"wrote {report}" + ("" if figure_text.startswith("_") else f" and {args.out_dir / FIGURE_NAME}"))
    if figure_text.startswith("_"):
        print(figure_text.strip("_"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
