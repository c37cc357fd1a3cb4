"""The benchmark's probes: timers (CUDA events or wall clock), peak memory, and how a failed row
reads (out of memory or one line of its error); `release_training` puts a backend back into its
inference state after a training row.
"""
from __future__ import annotations

import gc
import time
from typing import Any, Callable


def cuda_index(device) -> int | None:
    """The CUDA device ordinal of `device` (torch.device("cuda") means the current one); None on CPU.
    Some torch.cuda functions (set_per_process_memory_fraction) refuse a device without an index."""
    import torch

    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


class Timer:
    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.index = cuda_index(device)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.index)

    def events_ms(self, fn: Callable[[], Any]) -> float:
        """Milliseconds of `fn` (CUDA events on the current stream; perf_counter on CPU)."""
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        self.sync()
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    def wall_ms(self, fn: Callable[[], Any]) -> float:
        """Milliseconds of `fn` by the wall clock between device synchronisations (CPU work included)."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3


class Memory:
    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.index = cuda_index(device)

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.index)

    def read(self) -> tuple[float | None, float | None]:
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated(self.index) / 2**30,
                    self.torch.cuda.max_memory_reserved(self.index) / 2**30)
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, None
        except Exception:  # noqa: BLE001 - not on every platform
            return None, None


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def release_training(backend) -> None:
    """After a training row, also a failed one (OOM mid-step): no grads, trained weights back to the
    compute dtype, nothing requires grad, so the next rows see the inference-state backend."""
    for p in backend.parameters():
        p.grad = None
    backend.freeze()
    gc.collect()


def _prompt() -> str:
    from .workloads import PROMPT

    return PROMPT
