"""What one `python -m db3d` job spent its time on, as one line at the end of its log.

The stage loops mark their progress at points where the host has already waited for the GPU
(a loss read back, a batch copied to the CPU), so the times are the device's, not the launch
queue's. At exit the CLI logs one line, `JOB_LINE_TAG` + JSON:

- `wall_s`: from the process's start (the interpreter, imports and CUDA context included) to now;
- `startup_s`: process start to the main loop's first step (imports, model build or load,
  data loading): what every job pays again;
- `loop`: the main loop's `iters`, `loop_s`, `warmup_s` (its first marked stretch: CUDA-graph
  capture, allocator growth, the occupancy grid's first updates) and `steady_it_s` (iterations
  per second after that stretch, in-loop checkpoint writes included, as a user gets them);
- `peak_reserved_gib` / `peak_alloc_gib`: the CUDA caching allocator's peaks over the job;
- `samplers`: the NeRF samplers its renders used, as `sampler@device type` (db3d.nerf.render);
- whatever the stage `note`d about itself (`job`: which stage it is).

`db3d.bench.joblog` reads these lines back from a workflow's logs into the per-rule table.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

JOB_LINE_TAG = "db3d job: "
WARMUP_FRACTION = 0.1  # the first marked stretch covering >= this share of a loop is its warm-up


def _process_start() -> float:
    """Wall-clock time at which this process started (falls back to this module's import)."""
    try:
        import psutil  # noqa: PLC0415

        return psutil.Process(os.getpid()).create_time()
    except Exception:  # noqa: BLE001 - psutil missing or /proc unreadable: import time is close
        return time.time()


@dataclass
class Loop:
    """One main loop's progress: (wall time, iterations done) at host-synchronised points."""

    name: str
    total: int
    marks: list[tuple[float, int]] = field(default_factory=list)

    def mark(self, done: int) -> None:
        self.marks.append((time.time(), int(done)))

    def summary(self) -> dict:
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        out = {"name": self.name, "iters": n1 - n0, "loop_s": t1 - t0, "warmup_s": None, "steady_it_s": None}
        need = n0 + max(1, math.ceil(WARMUP_FRACTION * (n1 - n0)))
        warm = next(((t, n) for t, n in self.marks[1:] if n >= need), None)
        if warm is not None and n1 > warm[1] and t1 > warm[0]:
            out["warmup_s"] = warm[0] - t0
            out["steady_it_s"] = (n1 - warm[1]) / (t1 - warm[0])
        return out


@dataclass
class _Job:
    start: float = field(default_factory=_process_start)
    loops: list[Loop] = field(default_factory=list)
    samplers: set[str] = field(default_factory=set)
    info: dict = field(default_factory=dict)
    peak_reserved: float = 0.0
    peak_alloc: float = 0.0


_JOB = _Job()


def loop(name: str, total: int, done: int = 0) -> Loop:
    """Start timing a main loop of `total` iterations (`done` already done: a resumed run); the
    first step starts now."""
    lp = Loop(name, int(total))
    lp.mark(done)
    _JOB.loops.append(lp)
    return lp


def note(**info) -> None:
    """Say what the job is (e.g. job='nerf stage1'): copied into its log line."""
    _JOB.info.update(info)


def note_sampler(sampler: str, device_type: str) -> None:
    _JOB.samplers.add(f"{sampler}@{device_type}")


def record_peak() -> None:
    """Keep the CUDA allocator's peaks so far (call before anything resets them)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    _JOB.peak_reserved = max(_JOB.peak_reserved, torch.cuda.max_memory_reserved() / 2**30)
    _JOB.peak_alloc = max(_JOB.peak_alloc, torch.cuda.max_memory_allocated() / 2**30)


def summary(command: str, status: str) -> dict:
    record_peak()
    now = time.time()
    main = max(_JOB.loops, key=lambda lp: lp.marks[-1][0] - lp.marks[0][0], default=None)
    cuda = _JOB.peak_reserved > 0
    return {"command": command, "status": status, "started": _JOB.start, "wall_s": now - _JOB.start,
            "startup_s": main.marks[0][0] - _JOB.start if main is not None else None,
            "loop": main.summary() if main is not None else None,
            "peak_reserved_gib": _JOB.peak_reserved if cuda else None,
            "peak_alloc_gib": _JOB.peak_alloc if cuda else None,
            "samplers": sorted(_JOB.samplers), **_JOB.info}


def job_line(command: str, status: str) -> str:
    """The line the CLI logs last (db3d.bench.joblog parses it)."""
    return JOB_LINE_TAG + json.dumps(summary(command, status), sort_keys=True)
