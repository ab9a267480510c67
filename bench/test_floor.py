"""The step-latency floor (``bench.floor``): its kernel's arithmetic under the interpreter (one program per group:
the barrier passes at once, so what is tested is the indexing, the h read and write and the step count), the CSV
it writes, the floor of a sweep row, and its compilation for the GPU (no GPU needed)."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from bench import floor
from bench.configs import BenchConfig
from bench.environment import REPO_ROOT
from bench.results import FLOOR_COLUMNS, latency_floor_ms, read_floor, row_floor_key

CPU = torch.device("cpu")


def _grid(**changes) -> floor.FloorGrid:
    # B = 20 in batch tiles of 16 (two tiles, the second partial), both directions, H_out = 24 (not a power of two).
    grid = floor.floor_grid(BenchConfig(20, 4, 24, 24, bidirectional=True), CPU)
    assert (grid.batch_tiles, grid.programs, grid.directions) == (2, 1, 2)
    values = {**grid.__dict__, **changes}
    return floor.FloorGrid(**values)


@pytest.mark.parametrize("block_k", [32, 8], ids=["one-chunk", "three-chunks"])
def test_one_step_writes_the_row_mean_plus_one(block_k):
    run = floor.FloorRun(_grid(block_k=block_k), CPU)
    h0 = torch.rand(2, 20, 24)
    run.h[0] = h0
    run.h[1] = float("nan")  # poisoned: every element must be written
    run.launch(1, read_h=True)
    expected = (h0.mean(dim=-1, keepdim=True) + 1).expand(2, 20, 24)
    torch.testing.assert_close(run.h[1], expected)
    torch.testing.assert_close(run.h[0], h0)  # h_{t-1} is only read
    assert run.steps_done.tolist() == [1] * 4  # 2 directions x 2 batch tiles x 1 program


def test_barrier_only_counts_steps_and_touches_no_h():
    run = floor.FloorRun(_grid(), CPU)
    h = torch.rand_like(run.h)
    run.h.copy_(h)
    run.launch(7, read_h=False)
    assert run.steps_done.tolist() == [7] * 4
    torch.testing.assert_close(run.h, h)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_check_counts_every_step(dtype):
    run = floor.FloorRun(_grid(dtype=dtype), CPU)
    assert run.check(5) == "ok"
    assert bool((run.h[1] == 5).all()) and run.steps_done.tolist() == [5] * 4


def test_check_reports_a_program_that_lags(monkeypatch):
    run = floor.FloorRun(_grid(), CPU)
    launch = run.launch

    def lagging(steps, read_h):
        launch(steps, read_h)
        run.h[steps % 2, 1, 19, 23] -= 1

    monkeypatch.setattr(run, "launch", lagging)
    assert run.check(3).startswith("failed: 1 of 960 elements")


def test_latency_floor_of_a_sweep_row():
    row = {"dtype": "float16", "hidden_size": "1024", "proj_size": "0", "batch": "16", "bidirectional": "True",
           "num_layers": "2", "seq_len": "512", "mode": "forward"}  # fmt: skip
    assert row_floor_key(row) == "float16-H1024-O1024-B16-D2"
    floors = {row_floor_key(row): {"status": "ok", "barrier_h_us": "3.5"}}
    assert latency_floor_ms(row, floors) == pytest.approx(2 * 512 * 3.5e-3)
    assert latency_floor_ms({**row, "mode": "forward_backward"}, floors) == pytest.approx(2 * 2 * 512 * 3.5e-3)
    assert latency_floor_ms({**row, "proj_size": "256"}, floors) is None  # another grid: no floor measured
    assert latency_floor_ms(row, {row_floor_key(row): {"status": "error", "barrier_h_us": "3.5"}}) is None


def test_floor_command_writes_one_row_per_grid(tmp_path):
    path = tmp_path / "floor.csv"
    # The first three cpu configurations: two grids (one and two directions; layers share one).
    assert floor.main(["--preset", "cpu", "--max-configs", "3", "--out", str(path), "--reps", "1"]) == 0
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == list(FLOOR_COLUMNS)
    assert [row["key"] for row in rows] == ["float32-H8-O8-B2-D1", "float32-H8-O8-B2-D2"]
    assert all(row["status"] == "ok" and row["check"] == "ok" and row["barrier_h_us"] for row in rows), rows
    assert set(read_floor(path)) == {row["key"] for row in rows}
    assert floor.main(["--preset", "cpu", "--max-configs", "1", "--compile-only"]) == 0


def test_floor_kernel_compiles_for_the_gpu():
    # The interpreter never compiles: compile for sm_90 as the GPU will (inline PTX barrier, .cg loads).
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.floor", "--aot", "90"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count(": ok") == 6
