"""A grid-wide barrier for persistent kernels, built from one counter (Triton has no grid-sync instruction).

Only correct when every program of the group is resident at once: the launcher sizes the grid to the device
and launches it cooperatively, which fails instead of deadlocking when the grid does not fit. Under the
interpreter programs run one after another, so the launcher gives each group a single program, for which no
counter is needed (``CROSS_PROGRAM`` False).

The barrier is split in two, ``arrive`` then ``wait``, so that a program can issue loads of its own inputs for the
next step (which no other program writes) while the others arrive. The counter only grows within a launch
(arrival k of a group of P programs at barrier n makes n * P + k), so it never needs resetting between steps; an
int32 holds 2^31 / P barriers.

Why inline PTX: a scalar ``tl.atomic_add`` runs on one thread and broadcasts its result through shared memory
between two block barriers, so a spin loop of them pays two block barriers per poll (triton-lang/triton#7125).
Here thread 0 alone arrives (a release add) and spins on an acquire load, and the block meets once before the
arrival (every thread's stores ordered before it) and once after the wait (every thread's later loads ordered after
the acquire): two block barriers per grid barrier, none per poll. ``tl.atomic_load`` and ``tl.atomic_poll`` exist
only from triton 3.9; the PTX works the same on every supported version.
"""

import triton
import triton.language as tl

# One thread arrives or waits; the others skip to the end, and the block barrier next to the call holds them. The
# labels are local to the braces, so the code can be inlined any number of times. (A jitted function reads globals
# only as constexprs.)
_ARRIVE = tl.constexpr("""
{
.reg .pred %p_leader;
.reg .b32 %r_thread;
mov.u32 %r_thread, %tid.x;
setp.eq.u32 %p_leader, %r_thread, 0;
@%p_leader red.release.gpu.global.add.s32 [$1], 1;
mov.u32 $0, 0;
}
""")
_WAIT = tl.constexpr("""
{
.reg .pred %p_leader, %p_early;
.reg .b32 %r_thread, %r_seen;
mov.u32 %r_thread, %tid.x;
setp.eq.u32 %p_leader, %r_thread, 0;
@!%p_leader bra DONE;
WAIT:
ld.acquire.gpu.global.s32 %r_seen, [$1];
setp.lt.s32 %p_early, %r_seen, $2;
@%p_early bra WAIT;
DONE:
mov.u32 $0, 0;
}
""")


@triton.jit
def arrive(counter_ptr, CROSS_PROGRAM: tl.constexpr):
    """Count this program's arrival once all its threads are here (their global stores then precede it). Without
    ``CROSS_PROGRAM`` only the block barrier: it orders this program's stores before its own later loads (loads of
    other programs' data bypass L1 with ``.cg``)."""
    tl.debug_barrier()
    if CROSS_PROGRAM:
        tl.inline_asm_elementwise(_ARRIVE, "=r,l", [counter_ptr], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def wait(counter_ptr, target, CROSS_PROGRAM: tl.constexpr):
    """Return once ``target`` arrivals were counted at ``counter_ptr``, with the other programs' stores visible."""
    if CROSS_PROGRAM:
        tl.inline_asm_elementwise(_WAIT, "=r,l,r", [counter_ptr, target], dtype=tl.int32, is_pure=False, pack=1)
        tl.debug_barrier()


@triton.jit
def group_barrier(counter_ptr, target, CROSS_PROGRAM: tl.constexpr):
    """``arrive`` then ``wait``: ``target`` counts this program's arrival."""
    arrive(counter_ptr, CROSS_PROGRAM)
    wait(counter_ptr, target, CROSS_PROGRAM)
