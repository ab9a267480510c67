"""One kernel launched once per time step, with as little host work per launch as possible.

A step loop launches the same kernel T times with the same arguments but the step index. ``StepLauncher`` sends
the first launch of a call through Triton's normal path, ``kernel[grid](...)`` (autotuner lookup, argument
binding, specialisation key, compilation on a miss), which returns the compiled kernel; on CUDA every later step
then calls that compiled kernel's launcher directly with the arguments bound once, pointers as integers: the *lean*
launch. It skips the autotuner, the binder and the cache-key computation, and allocates nothing.

The lean launch repeats what ``JITFunction.run`` does after binding, in Triton 3.6 through 3.9:

    kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata, launch_metadata,
               launch_enter_hook, launch_exit_hook, *bound_args.values())

where ``kernel.run`` is the backend's launcher (``CudaLauncher``: 3.6 passes everything after ``function`` to a
generated C function, 3.9 names the four leading ones) and ``bound_args`` holds every parameter in the kernel's
order, constexprs included (the launcher skips them). The grid callable receives ``bound_args``
(``grid(bound_args)``), which is how the first launch records them. The hooks are ``HookChain`` objects that call
nothing unless a profiler added one, and the metadata is only read by hooks: the lean launch passes None for all
three. The compiled kernel stays valid for every step: its specialisation depends on the arguments, which do not
change within a call but for the step, a ``do_not_specialize`` parameter.

``adapt`` returns None, and every step takes the normal path, unless all of this holds: tensors on CUDA, not the
interpreter (which returns no compiled kernel), ``TRITON_LSTM_LEAN_LAUNCH`` not 0, no launch hooks or pre-run hooks
(a profiler sees every launch), a compiled kernel with ``run``, ``function`` and ``packed_metadata``, and a
launcher whose call signature is one of the two above. What only a GPU shows: that its launches compute what the
normal path computes (``conformance/test_host_overhead.py`` checks it bitwise on CUDA) and what they cost
(``bench/host_overhead.py``).
"""

import functools
import inspect
import os

import torch
import triton

LEAN = os.environ.get("TRITON_LSTM_LEAN_LAUNCH", "1") != "0"

# The launcher's leading parameters, in Triton 3.9 (named) and 3.6 (all but the first five in *args).
_LAUNCHER_HEAD = ("gridX", "gridY", "gridZ", "stream", "function")
_LAUNCHER_NAMED = ("kernel_metadata", "launch_metadata", "launch_enter_hook", "launch_exit_hook")


class _GridRecorder:
    """The grid handed to ``kernel[...]``: Triton calls it with the launch's bound arguments, which it keeps."""

    __slots__ = ("_grid", "bound", "grid")

    def __init__(self, grid):
        self._grid = grid
        self.bound = None
        self.grid = None

    def __call__(self, bound):
        self.bound = bound
        self.grid = tuple(self._grid(bound))
        return self.grid


class LeanLaunch:
    """Calls a compiled kernel's launcher with precomputed arguments; only the step changes between calls.

    ``name`` is the kernel's name in ``triton_lstm.tuning`` (what launch counters count by)."""

    __slots__ = ("_call", "_keep", "_run", "_step_at", "name")

    def __init__(self, name: str, run, head: tuple, args: list, step_at: int, keep: tuple):
        self.name = name
        self._run = run
        self._call = [*head, *args]
        self._step_at = len(head) + step_at
        self._keep = keep  # the tensors whose addresses ``args`` holds

    def __call__(self, step: int) -> None:
        call = self._call
        call[self._step_at] = step
        self._run(*call)


def _launcher_convention_known(run) -> bool:
    return _convention_known_for(type(run))


@functools.cache
def _convention_known_for(launcher_type) -> bool:
    """Whether instances of ``launcher_type`` are called with one of the two conventions (checked once a type)."""
    try:
        parameters = list(inspect.signature(launcher_type.__call__).parameters.values())[1:]  # without self
    except (AttributeError, TypeError, ValueError):
        return False
    positional = [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
    var_positional = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    if not var_positional or tuple(positional[:5]) != _LAUNCHER_HEAD:
        return False
    return tuple(positional[5:]) in ((), _LAUNCHER_NAMED)


def _hook_empty(hook) -> bool:
    # Triton 3.6 to 3.9 keep the launch hooks as a HookChain (a list of calls, empty unless a profiler added one).
    return hook is None or (isinstance(getattr(hook, "calls", None), list) and not hook.calls)


def _hooks_clear(compiled) -> bool:
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is None:
        return False
    if not all(_hook_empty(getattr(runtime, hook, None)) for hook in ("launch_enter_hook", "launch_exit_hook")):
        return False
    function = getattr(getattr(compiled, "src", None), "fn", None)
    return not getattr(function, "pre_run_hooks", None)


def adapt(name: str, compiled, recorder: _GridRecorder, step_name: str) -> LeanLaunch | None:
    """A lean launch of ``compiled`` with the arguments ``recorder`` saw (the step being ``step_name``), or None
    where one of the conditions in the module docstring fails."""
    bound = recorder.bound
    if compiled is None or bound is None or step_name not in bound or not _hooks_clear(compiled):
        return None
    if not all(hasattr(compiled, attribute) for attribute in ("function", "packed_metadata")):
        return None
    try:
        run = compiled.run  # the launcher (the first launch loaded the module)
    except Exception:
        return None
    if not _launcher_convention_known(run):
        return None
    names = list(bound)
    values = list(bound.values())
    tensors = tuple(v for v in values if isinstance(v, torch.Tensor))
    if not _on_cuda(tensors):
        return None
    args = [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in values]
    grid = recorder.grid + (1,) * (3 - len(recorder.grid))
    head = (*grid, _current_stream(), compiled.function, compiled.packed_metadata, None, None, None)
    return LeanLaunch(name, run, head, args, names.index(step_name), tensors)


def _on_cuda(tensors) -> bool:
    return bool(tensors) and all(t.is_cuda for t in tensors)


def _current_stream() -> int:
    """The stream Triton launched the first step on (the current one)."""
    driver = triton.runtime.driver.active
    return driver.get_current_stream(driver.get_current_device())


class StepLauncher:
    """Launches ``kernel[grid](*args, **meta)`` for a sequence of steps, ``args[step_at]`` being the step.

    ``name`` is the kernel's name in ``triton_lstm.tuning``; ``step_name`` the step parameter's name. The first
    launch goes through Triton (``kernel`` may be an autotuner); the following ones are lean where ``adapt``
    allows, else through Triton as well.
    """

    def __init__(self, name: str, kernel, grid, args: list, step_at: int, step_name: str, meta: dict):
        self.name = name
        self._kernel = kernel
        self._grid = grid
        self._args = args
        self._step_at = step_at
        self._step_name = step_name
        self._meta = meta
        self._lean = None

    def _launch(self, step: int):
        self._args[self._step_at] = step
        recorder = _GridRecorder(self._grid)
        compiled = self._kernel[recorder](*self._args, **self._meta)
        return compiled, recorder

    def run(self, steps) -> None:
        """Launch the kernel for each step of ``steps`` in order."""
        steps = iter(steps)
        lean = self._lean
        if lean is None:
            first = next(steps, None)
            if first is None:
                return
            compiled, recorder = self._launch(first)
            if LEAN:
                lean = self._lean = adapt(self.name, compiled, recorder, self._step_name)
        if lean is None:
            for step in steps:
                self._launch(step)
            return
        for step in steps:
            lean(step)
