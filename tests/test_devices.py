"""The per-job GPU lease (db3d.devices) on a CPU machine with a simulated device list.

Each "job" is a process leasing as `python -m db3d <gpu command>` with `device: auto` does
(`python -m db3d.devices COMMAND`, which calls the same `claim`), with CUDA_VISIBLE_DEVICES naming
GPUs this machine does not have: the lease only handles names and lock files.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from db3d import devices
from db3d.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _job(lease_dir: Path, visible: str, slots: int, command: str = "nerf",
         exclusive: str = "class-priors,dreambooth,toy-prior,bench") -> subprocess.Popen:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=visible, DB3D_LEASE_DIR=str(lease_dir),
               DB3D_DEVICE_SLOTS=str(slots), DB3D_DEVICE_EXCLUSIVE=exclusive, PYTHONPATH=str(REPO))
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([sys.executable, "-m", "db3d.devices", command], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _granted(p: subprocess.Popen) -> tuple[str, str, str]:
    device, visible, slots = p.stdout.readline().split()  # blocks until the lease is granted
    return device, visible, slots


@pytest.fixture
def jobs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_four_concurrent_jobs_get_four_devices_and_a_killed_jobs_device_is_free_again(tmp_path, jobs):
    jobs.extend(_job(tmp_path, "0,1,2,3", 1) for _ in range(4))
    got = [_granted(p) for p in jobs]
    assert {g[0] for g in got} == {"cuda"}
    assert sorted(g[1] for g in got) == ["0", "1", "2", "3"]  # each job sees only its own GPU
    fifth = _job(tmp_path, "0,1,2,3", 1)
    jobs.append(fifth)
    with pytest.raises(subprocess.TimeoutExpired):
        fifth.wait(timeout=2)  # every GPU is held: it waits, it does not double up
    victim = jobs[2]
    os.kill(victim.pid, signal.SIGKILL)  # no clean-up runs: only the kernel drops the flock
    victim.wait()
    assert _granted(fifth)[1] == got[2][1]
    fifth.kill()
    _, err = fifth.communicate()
    # the killed job's record was left in the slot file: reported in one line, then reused
    stale = [line for line in err.splitlines() if "was left by pid" in line]
    assert len(stale) == 1 and str(victim.pid) in stale[0] and "reused" in stale[0], err


def test_light_jobs_share_a_gpu_and_dreambooth_takes_one_whole(tmp_path, jobs):
    light = [_job(tmp_path, "0,1", 2, "nerf") for _ in range(2)]
    jobs.extend(light)
    gpus = [_granted(p)[1] for p in light]
    assert sorted(gpus) == ["0", "1"]  # idle GPUs first: one light job each
    more = [_job(tmp_path, "0,1", 2, "evaluate") for _ in range(2)]
    jobs.extend(more)
    gpus += [_granted(p)[1] for p in more]
    assert sorted(gpus) == ["0", "0", "1", "1"]  # then 2 jobs per GPU (device_slots 2)
    exclusive = _job(tmp_path, "0,1", 2, "dreambooth")
    jobs.append(exclusive)
    with pytest.raises(subprocess.TimeoutExpired):
        exclusive.wait(timeout=2)  # no GPU is free of light jobs
    for p, gpu in zip(light + more, gpus):
        if gpu == "1":
            p.kill()
    assert _granted(exclusive) == ("cuda", "1", "0,1")  # both slots of the GPU the kills freed


def test_exclusive_job_waits_for_a_gpu_free_of_light_jobs(tmp_path):
    held = devices.acquire(["0", "1"], 2, 1, tmp_path, job="nerf")
    other = devices.acquire(["0", "1"], 2, 1, tmp_path, job="nerf")
    assert {held.device, other.device} == {"0", "1"}  # spread over idle GPUs
    with pytest.raises(TimeoutError):
        devices.acquire(["0", "1"], 2, 2, tmp_path, job="dreambooth", timeout_s=1)
    other.release()
    whole = devices.acquire(["0", "1"], 2, 2, tmp_path, job="dreambooth", timeout_s=5)
    assert (whole.device, whole.slots) == (other.device, [0, 1])
    with pytest.raises(TimeoutError):  # and while it holds its GPU, no light job joins it
        devices.acquire([whole.device], 2, 1, tmp_path, job="nerf", timeout_s=1)
    whole.release()
    held.release()


def test_a_stale_lease_file_is_reported_in_one_line_and_reused(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / "gpu0.slot0").write_text(f"pid={dead} host=x job=nerf since=0\n")
    with caplog.at_level(logging.WARNING, logger="db3d.devices"):
        lease = devices.acquire(["0"], 1, 1, tmp_path, job="evaluate")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and f"pid {dead}" in lines[0] and "gpu0.slot0" in lines[0], lines
    assert f"pid={os.getpid()}" in (tmp_path / "gpu0.slot0").read_text()
    lease.release()
    assert (tmp_path / "gpu0.slot0").read_text() == ""  # a clean release leaves no record


def test_claim_on_a_host_without_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("DB3D_LEASE_DIR", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = {"device": "auto", "backend": "tiny"}
    assert devices.claim("nerf", cfg) is cfg  # auto on a CPU host: the CPU, no lease
    with pytest.raises(ConfigError, match="device 'cuda': no GPU is visible on this host; set device: cpu"):
        devices.claim("nerf", {"device": "cuda"})
    assert devices.claim("report", {"device": "cuda"})["device"] == "cuda"  # no model: no lease
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    with pytest.raises(ConfigError, match=r"device 'cuda:2': this host shows 2 GPU\(s\)"):
        devices.claim("nerf", {"device": "cuda:2"})
    monkeypatch.setenv("DB3D_DEVICE_SLOTS", "1")
    out = devices.claim("nerf", {"device": "cuda:1"})
    assert out["device"] == "cuda" and os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    devices._HELD.pop().release()


def test_lease_folder_not_writable_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"device lease folder .*file/leases: .*set DB3D_LEASE_DIR"):
        devices.acquire(["0"], 1, 1, blocker / "leases")


class _Res:
    def __init__(self, value):
        self.value = value


class _Workflow:
    def __init__(self, **res):
        self.global_resources = {k: _Res(v) for k, v in res.items()}

    def register_resource(self, name, value):
        self.global_resources[name] = _Res(value)


def _owned_env(monkeypatch):
    """plan_resources exports DB3D_DEVICE_SLOTS/EXCLUSIVE for the jobs it plans: set through
    monkeypatch first (delenv of an absent variable records nothing), so teardown removes them."""
    for name in (devices.SLOTS_ENV, devices.EXCLUSIVE_ENV):
        monkeypatch.setenv(name, "")


def test_plan_resources_slots_per_job_and_the_hosts_total(monkeypatch):
    _owned_env(monkeypatch)
    wf = _Workflow(gpu=4)
    cfg = {"device_slots": 2, "device_exclusive": ["class-priors", "dreambooth", "toy-prior", "bench"]}
    res = devices.plan_resources(wf, cfg, gpu_count=1)
    assert wf.global_resources["gpu_slots"].value == 8  # 4 GPUs x 2 jobs each
    assert res["nerf"] == res["evaluate"] == res["pseudo-views"] == {"gpu_slots": 1}
    assert res["dreambooth"] == res["class-priors"] == {"gpu_slots": 2}
    assert os.environ["DB3D_DEVICE_SLOTS"] == "2"  # what the jobs' leases read
    assert devices.plan_resources(_Workflow(gpu=1), cfg, gpu_count=0)["dreambooth"] == {"gpu_slots": 0}
    with pytest.raises(ConfigError, match="gpu_slots=1 is less than device_slots=2"):
        devices.plan_resources(_Workflow(gpu=1, gpu_slots=1), cfg, gpu_count=1)


def test_device_exclusive_decides_which_jobs_take_a_gpu_whole(tmp_path, jobs, monkeypatch):
    _owned_env(monkeypatch)
    cfg = {"device_slots": 4, "device_exclusive": ["dreambooth"]}
    res = devices.plan_resources(_Workflow(gpu=1), cfg, 1)
    assert res["dreambooth"] == {"gpu_slots": 4} and res["class-priors"] == {"gpu_slots": 1}
    assert res["nerf"] == {"gpu_slots": 1}
    assert os.environ[devices.EXCLUSIVE_ENV] == "dreambooth"
    # the toy study's setting: nothing exclusive, so DreamBooth jobs share the GPU with each other
    assert devices.plan_resources(_Workflow(gpu=1), dict(cfg, device_exclusive=[]), 1)["dreambooth"] == {"gpu_slots": 1}
    a = _job(tmp_path, "0", 2, "dreambooth", exclusive="")
    b = _job(tmp_path, "0", 2, "dreambooth", exclusive="")
    jobs.extend([a, b])
    assert _granted(a)[1] == "0" and _granted(b)[1] == "0"  # both on GPU 0 at once, a slot each
    with pytest.raises(ConfigError, match="device_exclusive: dreamboth is not a GPU command"):
        devices.plan_resources(_Workflow(gpu=1), dict(cfg, device_exclusive=["dreamboth"]), 1)
