"""`python -m db3d ARGS` with one injected fault: SIGKILL of the process at a chosen write.

    python tests/fault_run.py FAULT -- ARGS...

FAULT is `none` or `WRITER:N:WHEN`: at the N-th call (1-based) of WRITER, with WHEN
- `mid`: half of what the call would write is written to its file, then SIGKILL (a kill in the
  middle of writing a checkpoint: the file is a truncated temporary one);
- `after`: the call completes, then SIGKILL (a kill between two writes).
WRITER is `torch.save` (resume states, NeRF checkpoints, pseudo views) or `save_file`
(safetensors: the DreamBooth checkpoints). The kill is the real signal, so nothing of the process
(no `finally`, no atexit) runs after it, as with `kill -9`.

The resume intervals are shortened so that a run of a few steps writes several resume states
(stages.RESUME_EVERY = 2 NeRF steps; DreamBooth every 2 steps whatever a write costs): the
intervals only decide where a resumed run restarts, never what it computes.
"""
from __future__ import annotations

import io
import os
import signal
import sys


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _inject(fault: str) -> None:
    writer, n, when = fault.split(":")
    n = int(n)
    calls = {"n": 0}

    def wrap(real, write_half):
        def faulty(obj, path, *a, **k):
            calls["n"] += 1
            if calls["n"] != n:
                return real(obj, path, *a, **k)
            if when == "mid":
                write_half(real, obj, path, *a, **k)
            else:
                real(obj, path, *a, **k)
            _kill()
        return faulty

    if writer == "torch.save":
        import torch

        def half(real, obj, path, *a, **k):
            buf = io.BytesIO()
            real(obj, buf, *a, **k)
            data = buf.getvalue()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])

        torch.save = wrap(torch.save, half)
    elif writer == "save_file":
        import safetensors.torch

        def half(real, obj, path, *a, **k):
            real(obj, path, *a, **k)
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size // 2)

        safetensors.torch.save_file = wrap(safetensors.torch.save_file, half)
    else:
        raise SystemExit(f"unknown writer {writer!r}")


def main() -> None:
    fault, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: fault_run.py FAULT -- ARGS"
    from db3d import dreambooth, stages

    stages.RESUME_EVERY = 2
    dreambooth.RESUME_EVERY_STEPS = 2
    dreambooth.RESUME_MAX_OVERHEAD = float("inf")
    if fault != "none":
        _inject(fault)
    from db3d.cli import main as db3d_main

    sys.exit(db3d_main(args))


if __name__ == "__main__":
    main()
