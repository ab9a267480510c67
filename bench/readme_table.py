"""``python -m bench.readme_table [--check] [FILE.md ...]``: write the performance tables of a Markdown file (default:
the repository's README.md) from committed benchmark data, never by hand.

Each table sits between a spec comment and an end marker, and everything between them is this command's output:

    <!-- bench-table
    csv: bench/results/h200-issue4/run1-sweep.csv bench/results/h200-issue4/run4-sweep.csv
    floor: bench/results/<gpu>-<commit>/floor.csv
    rows: B1-T512-H256-I256-L1-uni-fp16 B16-T512-H256-I256-L1-uni-fp16
    columns: torch:forward triton_persistent:forward best_peer:forward floor:forward torch:forward_backward
    -->
    (generated)
    <!-- /bench-table -->

``csv``: sweep CSVs, merged in order (a later file's row replaces an earlier one's for the same configuration,
provider and mode); ``floor`` (optional): ``python -m bench.floor``'s CSV; ``rows`` (optional): configuration ids,
default every configuration of the CSVs; ``columns``: ``PROVIDER:MODE`` (median ms; for a provider other than torch
also its speedup over torch.nn.LSTM in that mode, bold where faster), ``best_peer:MODE`` (the fastest provider that
is not ours, and its ms), ``floor:MODE`` (the step-latency floor, ms). Paths are relative to the Markdown file's
folder. ``--check`` rewrites nothing and fails when a table is not what its data gives (a test runs it on README.md).
"""

import argparse
import re
import sys
import textwrap
from pathlib import Path

from bench.environment import REPO_ROOT
from bench.results import latency_floor_ms, merge_results, number, read_floor

BLOCK = re.compile(r"(<!-- bench-table\n(?P<spec>.*?)-->\n)(?P<body>.*?)(<!-- /bench-table -->)", re.DOTALL)
MODE_LABELS = {"forward": "forward", "forward_backward": "fwd+bwd"}
PROVIDER_LABELS = {
    "torch": "torch.nn.LSTM (cuDNN)",
    "compiled_cell": "compiled LSTMCell loop",
    "flashrnn": "FlashRNN",
    "naive": "eager loop",
}


def parse_spec(text: str) -> dict[str, list[str]]:
    """The spec comment's ``key: values`` lines (values split on whitespace; a key may continue on indented lines)."""
    spec: dict[str, list[str]] = {}
    key = None
    for line in text.splitlines():
        match = re.match(r"(\w+):(.*)", line)
        if match:
            key = match.group(1)
            spec[key] = match.group(2).split()
        elif line.strip() and key is not None:
            spec[key] += line.split()
    unknown = set(spec) - {"csv", "floor", "rows", "columns"}
    if unknown or "csv" not in spec or "columns" not in spec:
        raise ValueError(f"bench-table spec needs csv: and columns: (optional floor:, rows:), got {sorted(spec)}")
    return spec


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _provider_label(provider: str, on_gpu: bool) -> str:
    if provider == "torch" and not on_gpu:
        return "torch.nn.LSTM"
    if provider.startswith("triton_"):
        return "triton " + provider.removeprefix("triton_")
    return PROVIDER_LABELS.get(provider, provider)


def _labels(config_ids: list[str]) -> tuple[list[str], list[str]]:
    """Short row labels (the id's parts that differ between rows; the input size only where it is not H) and the
    parts every row shares."""
    split = [config.split("-") for config in config_ids]
    common = [part for part in split[0] if all(part in parts for parts in split)] if split else []
    labels = []
    for parts in split:
        hidden = next((part[1:] for part in parts if part.startswith("H")), None)
        kept = [p for p in parts if p not in common and not (p.startswith("I") and p[1:] == hidden)]
        labels.append(" ".join(kept))
    if all(
        next(p[1:] for p in parts if p.startswith("I")) == next(p[1:] for p in parts if p.startswith("H"))
        for parts in split
    ):
        common = [part for part in common if not part.startswith("I")] + ["I = H"]
    return labels, common


def render_table(spec: dict[str, list[str]], base: Path) -> str:
    """The Markdown a spec stands for: a caption line and the table."""
    paths = [base / path for path in spec["csv"]]
    rows = merge_results(paths)
    floors = read_floor(base / spec["floor"][0]) if spec.get("floor") else None
    by_key = {(row["config"], row["provider"], row["mode"]): row for row in rows}
    config_ids = spec.get("rows") or list(dict.fromkeys(row["config"] for row in rows))
    columns = [column.split(":") for column in spec["columns"]]
    for column in columns:
        if len(column) != 2:
            raise ValueError(f"column {':'.join(column)!r}: expected PROVIDER:MODE, best_peer:MODE or floor:MODE")
    used = [row for row in rows if row["config"] in config_ids and row["status"] == "ok"]
    missing = [config for config in config_ids if not any(row["config"] == config for row in used)]
    if missing:
        raise ValueError(f"no measured row for configuration(s) {missing} in {spec['csv']}")
    on_gpu = all(row["device_type"] == "cuda" for row in used)
    labels, common = _labels(config_ids)

    header = ["config"]
    for what, mode in columns:
        if what == "best_peer":
            header.append(f"best peer {MODE_LABELS.get(mode, mode)}")
        elif what == "floor":
            header.append(f"latency floor {MODE_LABELS.get(mode, mode)}")
        else:
            header.append(f"{_provider_label(what, on_gpu)} {MODE_LABELS.get(mode, mode)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config, label in zip(config_ids, labels, strict=True):
        cells = [label]
        for what, mode in columns:
            cells.append(_cell(what, mode, config, by_key, rows, floors))
        lines.append("| " + " | ".join(cells) + " |")

    def values(column):
        return ", ".join(dict.fromkeys(row[column] for row in used))

    commits = ", ".join(dict.fromkeys(row["git_commit"][:7] + row["git_commit"][40:] for row in used))
    caption = (
        f"_Generated by `python -m bench.readme_table` from {', '.join(f'`{p}`' for p in spec['csv'])}"
        + (f" and `{spec['floor'][0]}`" if spec.get("floor") else "")
        + f": {values('device')}, torch {values('torch_version')}, triton {values('triton_version')}, commit "
        f"{commits}; median ms of CUDA-event-timed calls"
        + ("" if on_gpu else " (CPU: a pipeline check, not a performance figure)")
        + "; in brackets the speedup over torch.nn.LSTM in the same mode, **bold** where faster"
        + (f"; every row: {' '.join(common)}" if common else "")
        + "._"
    )
    notes = []
    if any(row["schema_version"] == "1" and row["dtype"] == "float32" for row in used):
        notes.append(
            "_(TF32): torch.nn.LSTM with torch's defaults, where cuDNN multiplies float32 in TF32; those files' "
            "Triton rows computed exact float32 products._"
        )
    wrapped = [_wrap(text) for text in (caption, *notes)]
    return "\n".join([wrapped[0], "", *lines, *(["", *wrapped[1:]] if notes else []), ""])


def _wrap(text: str) -> str:
    """A paragraph at the README's line width."""
    return "\n".join(textwrap.wrap(text, width=120, break_long_words=False, break_on_hyphens=False))


def _cell(what, mode, config, by_key, rows, floors) -> str:
    if what == "floor":
        row = next((r for r in rows if r["config"] == config and r["mode"] == mode and r["status"] == "ok"), None)
        floor = latency_floor_ms(row, floors) if row is not None and floors else None
        return "–" if floor is None else _fmt(floor)
    if what == "best_peer":
        peers = [
            r
            for r in rows
            if r["config"] == config
            and r["mode"] == mode
            and r["status"] == "ok"
            and not r["provider"].startswith("triton_")
        ]
        if not peers:
            return "–"
        best = min(peers, key=lambda r: number(r, "median_ms"))
        return f"{_fmt(number(best, 'median_ms'))} ({_provider_label(best['provider'], True)})"
    row = by_key.get((config, what, mode))
    if row is None:
        return "–"
    if row["status"] != "ok":
        return row["status"]
    ms = number(row, "median_ms")
    if what == "torch":
        tf32 = row["schema_version"] == "1" and row["dtype"] == "float32" and row["device_type"] == "cuda"
        return _fmt(ms) + (" (TF32)" if tf32 else "")
    torch_row = by_key.get((config, "torch", mode))
    if torch_row is None or torch_row["status"] != "ok":
        return _fmt(ms)
    speedup = number(torch_row, "median_ms") / ms
    text = _fmt(ms)
    return f"{f'**{text}**' if speedup > 1 else text} ({speedup:.2f}x)"


def rewrite(text: str, base: Path) -> str:
    """``text`` with every bench-table block's body regenerated."""

    def replace(match: re.Match) -> str:
        return match.group(1) + render_table(parse_spec(match.group("spec")), base) + match.group(4)

    return BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md)")
    parser.add_argument("--check", action="store_true", help="fail if a table differs from its data; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files or [REPO_ROOT / "README.md"]:
        text = path.read_text()
        if not BLOCK.search(text):
            print(f"{path}: no bench-table block", file=sys.stderr)
            continue
        new = rewrite(text, path.resolve().parent)
        if new == text:
            print(f"{path}: up to date")
        elif args.check:
            stale.append(path)
            print(f"{path}: out of date (python -m bench.readme_table {path})", file=sys.stderr)
        else:
            path.write_text(new)
            print(f"{path}: tables rewritten")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
