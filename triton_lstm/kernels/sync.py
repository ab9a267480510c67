"""A grid-wide barrier for persistent kernels, built from one counter (Triton has no grid-sync instruction).

Only correct when every program of the group is resident at once: the launcher sizes the grid to the device
and launches it cooperatively, which fails instead of deadlocking when the grid does not fit. Under the
interpreter programs run one after another, so the launcher gives each group a single program, for which no
counter is needed (``CROSS_PROGRAM`` False).

Why inline PTX: a scalar ``tl.atomic_add`` runs on one thread and broadcasts its result through shared memory
between two block barriers, so a spin loop of them pays two block barriers per poll (triton-lang/triton#7125).
Here thread 0 alone arrives (a release add) and spins on an acquire load, and the block meets once before
(every thread's stores ordered before the arrival) and once after (every thread's later loads ordered after the
acquire): two block barriers per grid barrier, none per poll. ``tl.atomic_load``/``tl.atomic_poll`` exist only
from triton 3.9 and still broadcast through shared memory; PTX works the same on every supported version.
"""

import triton
import triton.language as tl

# Thread 0 arrives and waits; the other threads skip to the end and wait at the block barrier that follows. The
# labels are local to the braces, so the barrier can be inlined any number of times. (A jitted function reads
# globals only as constexprs.)
_ARRIVE_AND_WAIT = tl.constexpr("""
{
.reg .pred %p_leader, %p_early;
.reg .b32 %r_thread, %r_seen;
mov.u32 %r_thread, %tid.x;
setp.eq.u32 %p_leader, %r_thread, 0;
@!%p_leader bra DONE;
red.release.gpu.global.add.s32 [$1], 1;
WAIT:
ld.acquire.gpu.global.s32 %r_seen, [$1];
setp.lt.s32 %p_early, %r_seen, $2;
@%p_early bra WAIT;
DONE:
mov.u32 $0, 0;
}
""")


@triton.jit
def group_barrier(counter_ptr, target, CROSS_PROGRAM: tl.constexpr):
    """Wait until ``target`` arrivals were counted at ``counter_ptr`` (this program's included).

    The counter only grows within a launch (arrival k of a group of P programs at barrier n makes n * P + k),
    so it never needs resetting between steps; an int32 holds 2^31 / P barriers. Without ``CROSS_PROGRAM`` (a group
    of one program) only the block barrier remains: it orders this program's global stores before its own later
    loads (the loads of other programs' data bypass L1 with ``.cg``).
    """
    tl.debug_barrier()
    if CROSS_PROGRAM:
        tl.inline_asm_elementwise(_ARRIVE_AND_WAIT, "=r,l,r", [counter_ptr, target], dtype=tl.int32, is_pure=False,
                                  pack=1)  # fmt: skip
        tl.debug_barrier()
