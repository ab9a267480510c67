"""The GPU resource report (``triton_lstm.aot``): its reading of compiled code, its failure rules, and that it runs
from an environment that asks for the interpreter. CI runs the report itself on every kernel."""

import os
import subprocess
import sys
from pathlib import Path

from triton_lstm import asm_facts
from triton_lstm.aot import Row

ROOT = Path(__file__).resolve().parent.parent

# A time loop in TTGIR: one load through the weight argument before the loop (resident), one inside a constant
# 4-trip scf.for (streamed), and one through another argument.
TTGIR = """
  tt.func public @kernel(%w_hh_ptr: !tt.ptr<f16> loc("w_hh_ptr"(#loc)), %hs_ptr: !tt.ptr<f16> loc("hs_ptr"(#loc))) {
    %c0_i32 = arith.constant 0 : i32 loc(#loc1)
    %c256_i32 = arith.constant 256 : i32 loc(#loc1)
    %c1024_i32 = arith.constant 1024 : i32 loc(#loc1)
    %w = tt.splat %w_hh_ptr : !tt.ptr<f16> -> tensor<64x32x!tt.ptr<f16>, #blocked> loc(#loc2)
    %w_resident = tt.load %w : tensor<64x32x!tt.ptr<f16>, #blocked> loc(#loc2)
    %step:2 = scf.while (%arrivals = %c0_i32, %s = %c0_i32) : (i32, i32) -> (i32, i32) {
      scf.condition(%true) %arrivals, %s : i32, i32 loc(#loc3)
    } do {
    ^bb0(%arrivals: i32 loc("arrivals"(#loc4)), %s: i32 loc("s"(#loc5))):
      %h = tt.splat %hs_ptr : !tt.ptr<f16> -> tensor<16x256x!tt.ptr<f16>, #blocked1> loc(#loc6)
      %h_1 = tt.load %h : tensor<16x256x!tt.ptr<f16>, #blocked1> loc(#loc6)
      %acc = scf.for %k0 = %c0_i32 to %c1024_i32 step %c256_i32 iter_args(%a = %cst) -> (tensor<16x32xf32>) : i32 {
        %w_k = tt.addptr %w, %k0 : tensor<64x32x!tt.ptr<f16>, #blocked>, i32 loc(#loc7)
        %w_chunk = tt.load %w_k : tensor<64x32x!tt.ptr<f16>, #blocked> loc(#loc7)
        scf.yield %a : tensor<16x32xf32> loc(#loc8)
      } loc(#loc9)
      scf.yield %arrivals, %s : i32, i32 loc(#loc10)
    } loc(#loc11)
    tt.return loc(#loc12)
  } loc(#loc)
"""

# A time loop in PTX as LLVM annotates it: a block barrier, an MMA, the barrier's inline asm (a release arrival; a
# poll loop of acquire loads), and an inner loop with one more block barrier.
PTX = """
$L__BB0_2:                              // =>This Loop Header: Depth=1
                                        //     Child Loop BB0_3 Depth 2
\tbar.sync \t0;
\tmma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 { %r1, %r2, %r3, %r4 }, { %r5, %r6, %r7, %r8 }, { %r9, %r10 }, { %r1, %r2, %r3, %r4 };
\t// begin inline asm
\t@%p_leader red.release.gpu.global.add.s32 [%rd6], 1;
\tWAIT:
\tld.acquire.gpu.global.s32 %r_seen, [%rd6];
\tsetp.lt.s32 %p_early, %r_seen, %r10;
\t@%p_early bra WAIT;
\t// end inline asm
$L__BB0_3:                              //   Parent Loop BB0_2 Depth=1
                                        // =>  This Inner Loop Header: Depth=2
\tbar.sync \t0;
\t@%p3 bra \t$L__BB0_3;
$L__BB0_4:                              //   in Loop: Header=BB0_2 Depth=1
\t@%p4 bra \t$L__BB0_2;
$L__BB0_5:
\tret;
"""  # noqa: E501


def test_weight_bytes_count_the_loads_inside_the_time_loop():
    """Loads through the weight argument inside the time loop, times their constant trip counts: 4 x 64 x 32 fp16."""
    assert asm_facts.weight_bytes_per_step(TTGIR, ("w_hh_ptr",)) == 4 * 64 * 32 * 2
    assert asm_facts.weight_bytes_per_step(TTGIR, ("hs_ptr",)) == 16 * 256 * 2


def test_loop_facts_read_the_time_loop():
    facts = asm_facts.loop_facts(PTX)
    assert facts.mma == {"mma.sync f16": 1} and facts.tensor_cores
    assert (facts.block_barriers, facts.inner_loop_barriers, facts.grid_arrivals, facts.polls) == (1, 1, 1, 1)
    assert facts.barriers_in_polls == 0
    polling_barrier = PTX.replace("\tsetp.lt.s32", "\tbar.sync \t0;\n\tsetp.lt.s32")
    assert asm_facts.loop_facts(polling_barrier).barriers_in_polls == 1


def test_failure_rules():
    """A resident plan that loads W in the loop, a half plan without tensor cores, a barrier in a poll loop and an
    extra grid barrier each fail a row; the same row without them passes."""
    clean = asm_facts.LoopFacts(mma={"mma.sync f16": 8}, block_barriers=9, grid_arrivals=1, polls=1)

    def row(**changes):
        fields = {
            "kernel": "persistent_forward",
            "config": "H256",
            "dtype": "fp16",
            "arch": 90,
            "registers": 64,
            "spill_bytes": 0,
            "shared": 16384,
            "resident": True,
            "phases": 1,
            "weight_bytes": 0,
            "loop": clean,
        }
        return Row(**{**fields, **changes})

    assert row().failures() == []
    assert row(weight_bytes=1024).failures() == ["resident plan loads W inside the time loop"]
    assert row(resident=False, weight_bytes=1024).failures() == []
    assert row(loop=asm_facts.LoopFacts(block_barriers=9, grid_arrivals=1)).failures() == [
        "no tensor-core MMA in the time loop"
    ]
    assert row(dtype="fp32", loop=asm_facts.LoopFacts(block_barriers=9, grid_arrivals=1)).failures() == []
    polls = asm_facts.LoopFacts(mma={"mma.sync f16": 8}, grid_arrivals=1, barriers_in_polls=1)
    assert row(loop=polls).failures() == ["block barrier inside a poll loop"]
    two = asm_facts.LoopFacts(mma={"mma.sync f16": 8}, grid_arrivals=2)
    assert row(loop=two).failures() == ["2 grid barriers a step, expected 1"]
    assert row(spill_bytes=8).failures() == ["spills 8 bytes"]


def test_report_runs_from_an_interpreter_environment():
    """With TRITON_INTERPRET=1 set the kernels would be interpreted: the report compiles in a process without it."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
    command = [sys.executable, "-m", "triton_lstm.aot", "--kernel", "persistent_forward", "--dtype", "fp16", "--arch",
               "90"]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "0 failing row(s)" in done.stdout
