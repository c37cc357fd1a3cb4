"""CUDA graphs captured directly (`torch.cuda.CUDAGraph`), for a module's calls without autograd.

`CUDAGraphed(module)` is called like the module. A call made without autograd, on CUDA tensors, is
replayed from a CUDA graph captured for its input signature: the shape, dtype and device of every
tensor argument, the other arguments' values, and the state that picks the kernels (autocast and its
dtype, deterministic algorithms, TF32). The module's ~1000 kernel launches (SD's UNet) become one
graph launch; the kernels are the ones eager mode runs, so the numbers are the eager numbers.

- copy-in / copy-out: each graph owns static input buffers; a call copies its tensors in, replays,
  and returns a copy of the static outputs (the next replay overwrites them). All graphs of one
  wrapper share one memory pool, which is safe because every output is copied out right after its
  replay, on the same stream.
- capture is lazy and cheap (no tracing or code generation, unlike `torch.compile(mode=
  "reduce-overhead")`): the first `eager_calls` calls of a new signature run eagerly (one-off shapes
  are never captured), the next one warms up on a side stream, captures and replays.
- eager fallback: autograd on, CPU tensors, a stream already capturing, arguments that cannot be
  part of a key, more than `max_graphs` signatures, or a capture that failed (logged once).
- weights: a graph reads the parameters' memory, so in-place updates (an optimizer step, `copy_`)
  are seen by the next replay; a parameter given new storage (`p.data = ...`: a dtype cast,
  `.to()`) is detected per call (data pointers) and drops every graph; structural changes (LoRA
  adapters added, attention processors swapped) must call `invalidate()` (DiffusionBackend does).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)

_SCALARS = (int, float, bool, str, type(None))


class _Graph:
    __slots__ = ("graph", "inputs", "outputs", "out_spec", "out_consts")

    def __init__(self, graph, inputs, outputs, out_spec, out_consts):
        self.graph = graph
        self.inputs = inputs          # static input buffers, in argument order
        self.outputs = outputs        # static output tensors (pytree leaves that are tensors)
        self.out_spec = out_spec      # the output's pytree structure
        self.out_consts = out_consts  # leaf index -> non-tensor leaf of the output


def _describe(value: Any) -> Any:
    """The part of an input signature one argument contributes (None: it cannot be keyed)."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype, value.device)
    if isinstance(value, _SCALARS):
        return ("S", type(value).__name__, value)
    return None


def kernel_state() -> tuple:
    """Global settings that change which kernels a call runs (part of every graph's key)."""
    autocast = torch.is_autocast_enabled("cuda")
    return (autocast, torch.get_autocast_dtype("cuda") if autocast else None,
            torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)


class CUDAGraphed:
    """`module`'s calls without autograd replayed from per-signature CUDA graphs (module docstring)."""

    copies_out = True  # callers need not copy what a call returns

    def __init__(self, module: nn.Module, *, eager_calls: int = 1, warmup_iters: int = 1, max_graphs: int = 8,
                 name: str | None = None):
        self.module = module
        self.eager_calls = max(0, int(eager_calls))
        self.warmup_iters = max(0, int(warmup_iters))
        self.max_graphs = max(0, int(max_graphs))
        self.name = name or type(module).__name__
        self.graphs: dict[tuple, _Graph] = {}
        self.seen: dict[tuple, int] = {}
        self.failed: set[tuple] = set()
        self.capture_s: list[float] = []  # wall seconds of each capture (side-stream warm-up + capture)
        self.counts = {"replay": 0, "eager": 0, "capture": 0, "invalidate": 0}
        self._pool = None
        self._weights: list[torch.Tensor] = []
        self._fingerprint: tuple = ()
        self._collect_weights()

    # ------------------------------------------------------------------ state
    def _collect_weights(self) -> None:
        self._weights = list(self.module.parameters()) + list(self.module.buffers())
        self._fingerprint = self._current_fingerprint()

    def _current_fingerprint(self) -> tuple:
        return tuple(map(torch.Tensor.data_ptr, self._weights))

    def invalidate(self) -> None:
        """Drop every graph (and the pool) and re-read the module's parameters: call after a change
        to the module's structure or forward (adapters, attention processors)."""
        if self.graphs:
            self.counts["invalidate"] += 1
        for g in self.graphs.values():
            g.graph.reset()
        self.graphs.clear()
        self.seen.clear()
        self.failed.clear()
        self._pool = None
        self._collect_weights()

    def signature(self, args: tuple, kwargs: dict) -> tuple | None:
        """The graph key of a call, or None when the call must run eagerly."""
        parts = []
        for a in args:
            d = _describe(a)
            if d is None:
                return None
            parts.append(d)
        for k in sorted(kwargs):
            d = _describe(kwargs[k])
            if d is None:
                return None
            parts.append((k, d))
        return (tuple(parts), kernel_state())

    def why_eager(self, args: tuple, kwargs: dict) -> str | None:
        """Why this call cannot use a graph (None: it can)."""
        if torch.is_grad_enabled():
            return "autograd"
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        if not tensors or any(t.device.type != self.device_type for t in tensors):
            return "not " + self.device_type
        if self._capturing():
            return "stream capturing"
        return None

    # the CUDA-specific pieces (tests replace them to exercise the logic on CPU)
    device_type = "cuda"

    @staticmethod
    def _capturing() -> bool:
        return torch.cuda.is_current_stream_capturing()

    def _record(self, static_args: tuple, static_kwargs: dict, autocast: bool, dtype) -> tuple[Any, Any]:
        """Warm up on a side stream, then capture one call into a CUDA graph: (graph, static output)."""
        # warm-up on a side stream (lazy initialisations, workspaces) as torch's docs do
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_iters):
                self._static_call(static_args, static_kwargs)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # autocast's cast cache would free its casts when the context exits: off during capture
        ctx = (torch.autocast("cuda", dtype=dtype, cache_enabled=False) if autocast
               else torch.autocast("cuda", enabled=False))
        with torch.cuda.graph(graph, pool=self._pool), ctx:
            out = self._static_call(static_args, static_kwargs)
        return graph, out

    # ------------------------------------------------------------------ calls
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.why_eager(args, kwargs) is not None:
            return self._eager(args, kwargs)
        key = self.signature(args, kwargs)
        if key is None:
            return self._eager(args, kwargs)
        if self._current_fingerprint() != self._fingerprint:  # a parameter got new storage
            log.info("%s: parameters moved (new storage): dropping %d CUDA graph(s)", self.name, len(self.graphs))
            self.invalidate()
        g = self.graphs.get(key)
        if g is None:
            n = self.seen[key] = self.seen.get(key, 0) + 1
            if n <= self.eager_calls or key in self.failed or len(self.graphs) >= self.max_graphs:
                return self._eager(args, kwargs)
            g = self._capture(key, args, kwargs)
            if g is None:
                return self._eager(args, kwargs)
        return self._replay(g, args, kwargs)

    def _eager(self, args: tuple, kwargs: dict) -> Any:
        self.counts["eager"] += 1
        return self.module(*args, **kwargs)

    @staticmethod
    def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
        return [v for v in (*args, *(kwargs[k] for k in sorted(kwargs))) if isinstance(v, torch.Tensor)]

    def _replay(self, g: _Graph, args: tuple, kwargs: dict) -> Any:
        for buf, x in zip(g.inputs, self._tensors(args, kwargs)):
            buf.copy_(x)
        g.graph.replay()
        self.counts["replay"] += 1
        leaves = [o.clone() for o in g.outputs]
        it = iter(leaves)
        n = len(g.outputs) + len(g.out_consts)
        flat = [g.out_consts[i] if i in g.out_consts else next(it) for i in range(n)]
        return pytree.tree_unflatten(flat, g.out_spec)

    def _static_call(self, static_args: tuple, static_kwargs: dict) -> Any:
        return self.module(*static_args, **static_kwargs)

    def _capture(self, key: tuple, args: tuple, kwargs: dict) -> _Graph | None:
        t0 = time.perf_counter()
        # static inputs: contiguous copies (an expanded tensor cannot be copied into)
        static_args = tuple(a.detach().clone(memory_format=torch.contiguous_format)
                            if isinstance(a, torch.Tensor) else a for a in args)
        static_kwargs = {k: (v.detach().clone(memory_format=torch.contiguous_format)
                             if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        inputs = self._tensors(static_args, static_kwargs)
        autocast, dtype = key[1][0], key[1][1]
        try:
            graph, out = self._record(static_args, static_kwargs, autocast, dtype)
        except Exception as exc:  # noqa: BLE001 - a module that cannot be captured runs eagerly
            self.failed.add(key)
            log.warning("%s: CUDA graph capture failed for %s (%s: %s); eager from now on for this signature",
                        self.name, key[0], type(exc).__name__, exc)
            return None
        leaves, spec = pytree.tree_flatten(out)
        outputs = [x for x in leaves if isinstance(x, torch.Tensor)]
        consts = {i: x for i, x in enumerate(leaves) if not isinstance(x, torch.Tensor)}
        if not outputs:  # an output type pytree cannot open: its tensors could not be copied out
            self.failed.add(key)
            graph.reset()
            log.warning("%s: output %s holds no tensor pytree can reach; eager for this signature",
                        self.name, type(out).__name__)
            return None
        g = _Graph(graph, inputs, outputs, spec, consts)
        self.graphs[key] = g
        self.counts["capture"] += 1
        self.capture_s.append(time.perf_counter() - t0)
        log.info("%s: captured CUDA graph %d for %s in %.2f s", self.name, len(self.graphs), key[0], self.capture_s[-1])
        return g

    def describe(self) -> str:
        """One line of what happened so far (for logs and the benchmark's notes)."""
        c = self.counts
        cap = ", ".join(f"{s:.2f}" for s in self.capture_s)
        return (f"{len(self.graphs)} graph(s) captured ({cap} s), {c['replay']} replays, {c['eager']} eager calls, "
                f"{c['invalidate']} invalidations")
