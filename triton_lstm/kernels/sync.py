"""A grid-wide barrier for persistent kernels, built from atomics (Triton has no grid-sync instruction).

Only correct when every program of the group is resident at once: the launcher sizes the grid to the device
and launches it cooperatively, which fails instead of deadlocking when the grid does not fit. Under the
interpreter programs run one after another, so the launcher gives each group a single program, for which the
barrier passes at once.
"""

import triton
import triton.language as tl


@triton.jit
def group_barrier(counter_ptr, target):
    """Wait until ``target`` arrivals were counted at ``counter_ptr`` (this program's included).

    The counter only grows within a launch (arrival k of a group of P programs at barrier n makes n * P + k),
    so it never needs resetting between steps.
    """
    # Every thread's stores happen before the one-thread release add; the acquire polls make the other
    # programs' stores visible here once they have all arrived.
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release")
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire")
    while arrived < target:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire")
    tl.debug_barrier()
