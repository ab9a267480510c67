"""CUDA graphs of the per-step kernel's loop: one graph per (pass, sizes, dtype, T, flags, device, stream).

A forward or backward call of the per-step kernel launches T kernels from Python. With graphs on, a call whose key
was seen before runs its loop as one captured CUDA graph instead: the graph's kernels read and write static
buffers that belong to the cache entry, so each call copies its inputs in (the input projection is written there
directly, the weights and states copied: a graph reads the weights of the call, whether they were changed in place
or replaced), replays the graph and copies every result out (the caller, and autograd's saved tensors, never see
a static buffer that a later replay overwrites).

- First call of a key: plain eager loop (one-off shapes cost no graph). Second call: the loop runs eagerly on the
  entry's static buffers (it compiles and autotunes whatever capture must not) and is captured; later calls replay.
- Bounded: at most ``CACHE_SIZE`` graphs (least recently used dropped), none whose static buffers pass
  ``MAX_BYTES`` (large problems spend their time in the kernels, not in launching them).
- Never inside someone else's capture (``torch.cuda.graph``, ``torch.compile(mode="reduce-overhead")``): the lean
  launches are then captured into the caller's graph. A capture that fails is reported once and its key runs
  eagerly from then on; nothing falls back to torch's LSTM.
- Off by default: nothing measured yet says where replaying beats the lean launches once the copies are paid
  (``bench/host_overhead.py`` measures it). ``TRITON_LSTM_CUDA_GRAPHS=1`` (read at import) or
  ``triton_lstm.graphs.set_enabled(True)`` turns it on; ``TRITON_LSTM_CUDA_GRAPH_CACHE`` (entries, default 8)
  and ``TRITON_LSTM_CUDA_GRAPH_MAX_MB`` (per entry, default 256) bound it; ``clear()`` frees every graph.
"""

import collections
import os
import threading
import warnings

import torch

ENABLED = os.environ.get("TRITON_LSTM_CUDA_GRAPHS", "0") == "1"
CACHE_SIZE = int(os.environ.get("TRITON_LSTM_CUDA_GRAPH_CACHE", "8"))
MAX_BYTES = int(os.environ.get("TRITON_LSTM_CUDA_GRAPH_MAX_MB", "256")) << 20
# Eager calls of a key before its graph is captured.
EAGER_CALLS = 1

_lock = threading.Lock()
_graphs: collections.OrderedDict = collections.OrderedDict()  # key -> StepGraph, least recently used first
_seen: collections.OrderedDict = collections.OrderedDict()  # key -> eager calls so far (bounded like _graphs)
_failed: set = set()
_capture_streams: dict = {}


def set_enabled(enabled: bool) -> None:
    """Turn graph capture and replay on or off for every later call (graphs already captured are kept)."""
    global ENABLED
    ENABLED = bool(enabled)


def clear() -> None:
    """Drop every captured graph and its static buffers, and forget which keys were seen."""
    with _lock:
        _graphs.clear()
        _seen.clear()
        _failed.clear()


def cached() -> int:
    """Number of graphs held."""
    return len(_graphs)


def _usable(like: torch.Tensor) -> bool:
    """Graphs apply to CUDA tensors outside any stream capture."""
    return like.is_cuda and not torch.cuda.is_current_stream_capturing()


def _stream_key(like: torch.Tensor) -> tuple:
    if not like.is_cuda:
        return like.device.type, 0
    return like.device.index, torch.cuda.current_stream(like.device).cuda_stream


class _CudaGraph:
    """One captured loop on the current device (the real backend; tests substitute a replay-by-calling one)."""

    def __init__(self, loop):
        device = torch.cuda.current_device()
        stream = _capture_streams.get(device)
        if stream is None:
            stream = _capture_streams[device] = torch.cuda.Stream(device)
        self._graph = torch.cuda.CUDAGraph()
        # A side stream (capture cannot run on the legacy default stream); thread-local mode leaves other threads'
        # CUDA calls alone.
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._graph.capture_begin(capture_error_mode="thread_local")
            try:
                loop()
            finally:
                self._graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)

    def replay(self) -> None:
        self._graph.replay()


_backend = _CudaGraph


class StepGraph:
    """A cache entry: the static buffers of one key (``static``, set by the launcher) and its captured loop.

    Use as a context manager around filling ``static``, ``run`` and reading the results out: one call at a time.
    ``launches`` maps the names of the kernels in the graph (as in ``triton_lstm.tuning``) to launches per replay.
    """

    def __init__(self, key: tuple):
        self.key = key
        self.static = None
        self.launches: dict = {}
        self._graph = None
        self._lock = threading.Lock()

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()

    def run(self, loop, launches: dict) -> None:
        """Run ``loop`` (launches on ``static`` only, no allocation, no host sync) for this call: eagerly and
        captured the first time, replayed after."""
        if self._graph is not None:
            self.replay()
            return
        loop()
        try:
            self._graph = self._capture(loop)
            self.launches = dict(launches)
        except Exception as error:  # any capture failure: this key runs eagerly from now on, said once
            warnings.warn(f"triton_lstm: CUDA graph capture failed, running eagerly instead: {error}", stacklevel=3)
            with _lock:
                _failed.add(self.key)
                _graphs.pop(self.key, None)

    def _capture(self, loop):
        return _backend(loop)

    def replay(self) -> None:
        self._graph.replay()


def lookup(key: tuple, like: torch.Tensor, nbytes: int) -> StepGraph | None:
    """The graph entry for this call, or None when the call runs eagerly: graphs off, not CUDA, inside a capture,
    static buffers over ``MAX_BYTES``, a failed key, or a key seen fewer than ``EAGER_CALLS`` times before."""
    if not ENABLED or nbytes > MAX_BYTES or not _usable(like):
        return None
    key = (*key, *_stream_key(like))
    with _lock:
        if key in _failed:
            return None
        graph = _graphs.get(key)
        if graph is not None:
            _graphs.move_to_end(key)
            return graph
        seen = _seen.pop(key, 0)
        if seen < EAGER_CALLS:
            _seen[key] = seen + 1
            while len(_seen) > 4 * CACHE_SIZE:
                _seen.popitem(last=False)
            return None
        graph = _graphs[key] = StepGraph(key)
        while len(_graphs) > CACHE_SIZE:
            _graphs.popitem(last=False)
        return graph
