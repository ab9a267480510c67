"""Plumbing of ``bench/host_overhead.py`` on tiny sizes (under the interpreter without a GPU): every row written,
the statuses, the per-step fit and the summary's target lines."""

import csv

import pytest

from bench import host_overhead


def test_cpu_run_writes_every_row_and_a_summary(tmp_path):
    code = host_overhead.main(["--out", str(tmp_path), "--preset", "cpu", "--target-s", "0", "--max-reps", "3"])
    assert code == 0
    with open(tmp_path / "host_overhead.csv") as handle:
        rows = list(csv.DictReader(handle))
    batches, hiddens, seq_lens, dtypes = host_overhead.PRESETS["cpu"]
    expected = len(batches) * len(hiddens) * len(seq_lens) * len(dtypes) * len(host_overhead.IMPLEMENTATIONS) * 2
    assert len(rows) == expected
    assert set(rows[0]) == set(host_overhead.COLUMNS)
    for row in rows:
        if row["impl"] == "step_graphed" and row["device"].startswith("cpu"):
            assert row["status"] == "skipped: CUDA graphs need a GPU"
        else:
            assert row["status"] == "ok", row
            assert float(row["wall_ms"]) > 0 and float(row["host_ms"]) > 0 and int(row["reps"]) >= 3
    text = (tmp_path / "host_overhead.md").read_text()
    assert "pipeline check" in text and "| fp32 | 2 | 8 | forward |" in text


def test_budget_skips_the_rest(tmp_path):
    host_overhead.main(["--out", str(tmp_path), "--preset", "cpu", "--impl", "cudnn", "--budget-s", "0"])
    with open(tmp_path / "host_overhead.csv") as handle:
        assert {row["status"] for row in csv.DictReader(handle)} == {"skipped: time budget"}


def test_fit_and_target_lines():
    assert host_overhead._fit([(1, 0.105), (8, 0.14), (32, 0.26)]) == pytest.approx((5.0, 100.0))
    assert host_overhead._fit([(8, 1.0)]) is None

    def row(impl, seq_len, wall_ms, mode="forward"):
        return {"impl": impl, "mode": mode, "dtype": "fp16", "batch": 16, "hidden": 256, "seq_len": seq_len,
                "wall_ms": wall_ms, "status": "ok", "device": "NVIDIA H200", "torch": "2.11", "triton": "3.6",
                "git_commit": "abc", "timestamp": "now", "env": ""}  # fmt: skip

    rows = [row("cudnn", t, 0.02 + t * 0.001) for t in (1, 32)]
    rows += [row("step_lean", t, 0.05 + t * 0.008) for t in (1, 32)]
    rows += [row("step_graphed", t, 0.06 + t * 0.012) for t in (1, 32)]
    text = host_overhead.summary(rows)
    assert "- step_lean fp16 forward: 8.0 us a step (met)" in text
    assert "- step_graphed fp16 forward: 12.0 us a step (not met)" in text
    assert "- step_lean fp16 forward T=32: 0.306 ms vs cuDNN 0.052 ms = 5.88x (not met)" in text
