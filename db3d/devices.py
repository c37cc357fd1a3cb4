"""Which GPU a job runs on: a per-job lease over the host's visible GPUs (issue 17 items 4-5).

Snakemake decides how many GPU jobs run at once on a host (the local `gpu_slots` resource:
`gpu` GPUs x `device_slots` jobs per GPU, `plan_resources` below); it does not say which GPU each
job gets, so without a lease every `device: auto` job would land on GPU 0. Here each GPU has
`device_slots` slot files under the lease folder; a light job (NeRF/SDS, img2img, evaluation)
holds one slot of one GPU, an exclusive job (DreamBooth, class priors, the toy prior, bench) all
slots of one GPU. A slot is held by an `fcntl.flock` on its open file: the kernel drops the lock
when the process exits or is killed, so a killed job's GPU is free again at once. The file also
records who held it; a record left behind by a killed job is reported in one line and reused.

The job then sees only its GPU (CUDA_VISIBLE_DEVICES, set before torch initialises CUDA) and runs
on `cuda`. Where a scheduler already hands each job its own GPUs (inside a Slurm job; a Kubernetes
pod sees only its own GPU and has a private /tmp) the lease is skipped or trivially granted.
"""
from __future__ import annotations

import atexit
import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger("db3d.devices")

# The GPU commands of `python -m db3d` and how they hold a GPU: the one declaration of which jobs
# may share one (the Snakefile's resources and the job's lease both read it). DreamBooth training
# (and class-prior sampling at batch size, the toy prior, bench timings) fill a GPU on their own.
GPU_COMMANDS = {
    "class-priors": "exclusive",
    "dreambooth": "exclusive",
    "toy-prior": "exclusive",
    "bench": "exclusive",
    "nerf": "light",
    "pseudo-views": "light",
    "evaluate": "light",
    "reference": "light",
}
# Set by the Snakefile from config `device_slots` for the jobs it starts (they inherit its
# environment): jobs per GPU. A job started by hand, without it, takes its GPU whole.
SLOTS_ENV = "DB3D_DEVICE_SLOTS"
# The lease folder: one per host, shared by every job on it (tests point it elsewhere).
DIR_ENV = "DB3D_LEASE_DIR"
DEFAULT_DIR = "/tmp/db3d_device_leases"
_POLL_S = 0.5


def job_slots(command: str, device_slots: int) -> int:
    """Slots of one GPU a job of `command` holds: 1 for a light job, all for an exclusive one."""
    return device_slots if GPU_COMMANDS[command] == "exclusive" else 1


def plan_resources(workflow, config: dict, gpu_count: int) -> dict[str, dict[str, int]]:
    """The Snakefile's side: each GPU command's `resources` ({"gpu_slots": n}) and the host's total.

    The local total is `gpu` (GPUs of this host: profiles/default's `resources: gpu: 1`, or
    `--resources gpu=N`) x `device_slots`, registered as the `gpu_slots` resource unless given
    explicitly. `gpu_count` is 0 on a CPU run: then no job asks for a slot.
    """
    slots = config["device_slots"]
    os.environ[SLOTS_ENV] = str(slots)
    res = workflow.global_resources
    if "gpu" in res and "gpu_slots" not in res and res["gpu"].value is not None:
        workflow.register_resource("gpu_slots", int(res["gpu"].value) * slots)
    if gpu_count and "gpu_slots" in res and res["gpu_slots"].value is not None \
            and int(res["gpu_slots"].value) < slots:
        raise ConfigError(f"resource gpu_slots={res['gpu_slots'].value} is less than device_slots={slots}, "
                          "so a DreamBooth job (a whole GPU) could never start; set --resources gpu=<GPUs> "
                          "and leave gpu_slots to the Snakefile")
    return {cmd: {"gpu_slots": gpu_count * job_slots(cmd, slots)} for cmd in GPU_COMMANDS}


def visible_devices() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's entries when it is set, else every
    GPU the driver reports (NVML, through torch; this does not initialise CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and not d.strip().startswith("-")]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class Lease:
    device: str                  # the GPU's entry in the visible list (a CUDA index or UUID)
    slots: list[int]
    path: Path
    _files: list = field(default_factory=list, repr=False)

    def release(self) -> None:
        for f in self._files:
            try:
                f.truncate(0)  # no record left: the next holder has nothing to report
                f.close()      # closing drops the flock
            except OSError:
                pass
        self._files.clear()


def _slot_path(lease_dir: Path, device: str, slot: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in device)
    return lease_dir / f"gpu{safe}.slot{slot}"


def _try_lock(path: Path):
    f = open(path, "a+")  # never truncates: a killed holder's record stays readable
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_over(f, path: Path, job: str) -> None:
    f.seek(0)
    old = f.read().strip()
    if old:  # a record whose writer no longer holds the lock: it was killed before releasing
        fields = dict(kv.split("=", 1) for kv in old.split() if "=" in kv)
        pid = fields.get("pid", "?")
        gone = "is gone" if pid.isdigit() and not _pid_alive(int(pid)) else "no longer holds it"
        log.warning("device lease: %s was left by pid %s (%s), which %s (killed?); the GPU slot is "
                    "free and is reused", path, pid, fields.get("job", "?"), gone)
    f.seek(0)
    f.truncate(0)
    f.write(f"pid={os.getpid()} host={socket.gethostname()} job={job} since={int(time.time())}\n")
    f.flush()


def _free_slots(lease_dir: Path, device: str, n: int) -> int:
    free = 0
    for s in range(n):
        f = _try_lock(_slot_path(lease_dir, device, s))
        if f is not None:
            free += 1
            f.close()
    return free


def acquire(devices: list[str], device_slots: int, take: int, lease_dir: Path, job: str = "",
            timeout_s: float | None = None) -> Lease:
    """Hold `take` slots of one of `devices` (waiting while all are busy). Light jobs (take 1) go
    to the GPU with the most free slots (one job per GPU while there are idle ones), an exclusive
    job (take = device_slots) to a GPU with none taken."""
    if not devices:
        raise ConfigError("device lease: no GPU is visible on this host (CUDA_VISIBLE_DEVICES / the "
                          "driver report none); set device: cpu, or run on a host with a GPU")
    if not 1 <= take <= device_slots:
        raise ValueError(f"take {take} outside 1..{device_slots}")
    try:
        lease_dir.mkdir(parents=True, exist_ok=True)
        probe = _try_lock(_slot_path(lease_dir, devices[0], 0))
        if probe is not None:
            probe.close()
    except OSError as e:
        raise ConfigError(f"device lease folder {lease_dir}: {e.strerror}; set {DIR_ENV} to a folder "
                          "every job on this host can write") from None
    t0, said = time.monotonic(), 0.0
    while True:
        order = sorted(devices, key=lambda d: -_free_slots(lease_dir, d, device_slots))
        for dev in order:
            files, slots = [], []
            for s in range(device_slots):
                f = _try_lock(_slot_path(lease_dir, dev, s))
                if f is not None:
                    files.append(f)
                    slots.append(s)
                    if len(files) == take:
                        break
            if len(files) == take:
                for f, s in zip(files, slots):
                    _take_over(f, _slot_path(lease_dir, dev, s), job)
                return Lease(dev, slots, lease_dir, files)
            for f in files:
                f.close()
        waited = time.monotonic() - t0
        if timeout_s is not None and waited >= timeout_s:
            raise TimeoutError(f"no free GPU slot after {waited:.0f} s")
        if waited - said >= 60 or said == 0:
            said = waited or 1e-9
            log.info("device lease: waiting for %d free slot(s) of one GPU: %d GPU(s) x %d slots under %s "
                     "are held (see the files there for who holds them)", take, len(devices),
                     device_slots, lease_dir)
        time.sleep(_POLL_S)


_HELD: list[Lease] = []  # the job's lease lives as long as the process


def claim(command: str, cfg: dict) -> dict:
    """The job's side (python -m db3d): for a GPU command whose `device` is auto or cuda[:N] on a
    host with GPUs, lease a GPU, narrow CUDA_VISIBLE_DEVICES to it and return the config with
    `device: cuda`. Anything else (CPU runs, commands without a model) is returned unchanged."""
    device = str(cfg.get("device", "cpu"))
    if command not in GPU_COMMANDS or device == "cpu":
        return cfg
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return cfg  # Slurm already gave this job its own GPUs (and may renumber them from 0)
    devices = visible_devices()
    if not devices:
        if device == "auto":
            return cfg  # auto on a CPU host: the CPU
        raise ConfigError(f"device {device!r}: no GPU is visible on this host; set device: cpu or auto")
    if device.startswith("cuda:"):
        n = int(device.split(":")[1])
        if n >= len(devices):
            raise ConfigError(f"device {device!r}: this host shows {len(devices)} GPU(s); "
                              f"pick cuda:0..cuda:{len(devices) - 1} or cuda/auto")
        devices = [devices[n]]
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("device lease: CUDA was initialised before the lease narrowed CUDA_VISIBLE_DEVICES")
    slots = int(os.environ.get(SLOTS_ENV, "1"))
    lease = acquire(devices, slots, job_slots(command, slots),
                    Path(os.environ.get(DIR_ENV, DEFAULT_DIR)), job=command)
    _HELD.append(lease)
    atexit.register(lease.release)  # a clean exit leaves no record; a kill leaves one (reported)
    os.environ["CUDA_VISIBLE_DEVICES"] = lease.device
    log.info("device lease: GPU %s, slot(s) %s of %d (CUDA_VISIBLE_DEVICES=%s)", lease.device,
             ",".join(map(str, lease.slots)), slots, lease.device)
    return dict(cfg, device="cuda")


def _hold_main(argv: list[str] | None = None) -> int:
    """`python -m db3d.devices COMMAND`: lease a GPU as a job of COMMAND with device auto would,
    print the CUDA_VISIBLE_DEVICES it got and its slots, and hold the lease until killed (the
    stand-in for a GPU job in the concurrency tests; the device list may be simulated)."""
    import sys

    command = (sys.argv[1:] if argv is None else argv)[0]
    cfg = claim(command, {"device": "auto"})
    lease = _HELD[-1] if _HELD else None
    print(cfg["device"], os.environ.get("CUDA_VISIBLE_DEVICES", ""),
          ",".join(map(str, lease.slots)) if lease else "-", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(_hold_main())
