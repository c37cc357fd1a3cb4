"""A real single-node Slurm cluster on localhost for tests/test_slurm.py: Debian's slurm-wlm 22.05
(slurmctld + slurmd) and munge, installed by envs/setup-slurm.sh.

Everything lives in a scratch folder (state, spool, logs, a private munged with its own key and
socket, free TCP ports) except the one file Slurm clients cannot be pointed elsewhere for: the
executor plugin's job step clears every SLURM_* variable (SLURM_CONF included) before its nested
`srun`, so the config must sit at Slurm's compiled-in path /etc/slurm/slurm.conf. The cluster writes
it there only when that path is free (or holds a file this module wrote), marks it, and removes it
on stop; a machine with a real Slurm config is never touched (`unavailable()` says why).

The node advertises 2 GPUs (gres `gpu:2`, two placeholder files: slurmd logs that they are not
device files and schedules them anyway), 8 CPUs and 64 GB (`SlurmdParameters=config_overrides`:
more than this machine has, so profiles/slurm's requests fit as shipped; nothing is enforced, so
the extra CPUs only oversubscribe). Accounting needs slurmdbd, which is not run: finished jobs
are recorded by `JobCompType=jobcomp/filetxt` (read with `sacct -c`) and stay visible to
`scontrol show job` and `squeue` for `MinJobAge` (an hour), which is what the plugin's
`--slurm-status-command squeue` needs.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by db3d tests/slurm_cluster.py (removed when the test cluster stops)"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "sacct")


def unavailable() -> str | None:
    """Why a local cluster cannot be started here (None when it can)."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing): run envs/setup-slurm.sh"
    if os.geteuid() != 0:
        return "the local Slurm cluster runs its daemons as root (CI does); not root here"
    for path in (SYSTEM_CONF, SYSTEM_CONF.parent / "gres.conf"):
        if path.exists() and MARK not in path.read_text(errors="replace"):
            return f"{path} belongs to a real Slurm installation; the test cluster leaves it alone"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """`with LocalSlurm() as cluster:` starts munged, slurmctld and slurmd and waits for the node
    to be idle; leaving the block cancels what is left and stops the three daemons."""

    def __init__(self, cpus: int = 8, gpus: int = 2, mem_mb: int = 64000):
        self.cpus, self.gpus, self.mem_mb = cpus, gpus, mem_mb
        self.dir: Path | None = None
        self._pids: list[int] = []

    # ---- set-up -------------------------------------------------------------------------------
    def _write_configs(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "munge", "run"):
            (d / sub).mkdir()
        (d / "munge").chmod(0o700)  # munged refuses a key whose folder others can write or read
        (d / "run").chmod(0o755)  # ... and a socket folder others cannot enter
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for i in range(self.gpus):
            (d / f"gpu{i}").touch()
        gpu_files = f"{d}/gpu[0-{self.gpus - 1}]" if self.gpus > 1 else f"{d}/gpu0"
        (d / "gres.conf").write_text(f"NodeName=localhost Name=gpu File={gpu_files}\n")
        conf = f"""{MARK}
ClusterName=db3dtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/run/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
GresTypes=gpu
JobCompType=jobcomp/filetxt
JobCompLoc={d}/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=gpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=localhost MaxTime=INFINITE State=UP
"""
        (d / "slurm.conf").write_text(conf)
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        # gres.conf is read from the folder slurm.conf is found in
        for name in ("slurm.conf", "gres.conf"):
            target = SYSTEM_CONF.parent / name
            if target.exists() or target.is_symlink():
                target.unlink()
            if name == "slurm.conf":
                target.write_text(conf)
            else:
                target.write_text(MARK + "\n" + (d / name).read_text())

    def _daemon(self, *cmd: str, pidfile: Path) -> None:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)
        for _ in range(100):
            if pidfile.is_file() and pidfile.read_text().strip():
                self._pids.append(int(pidfile.read_text().split()[0]))
                return
            time.sleep(0.1)
        raise RuntimeError(f"{cmd[0]} started but wrote no pid file {pidfile}")

    def start(self) -> "LocalSlurm":
        why = unavailable()
        if why:
            raise RuntimeError(why)
        self.dir = Path(tempfile.mkdtemp(prefix="db3d-slurm-"))
        self.dir.chmod(0o755)  # munged checks that every user can reach its socket
        self._write_configs()
        d = self.dir
        self._daemon("munged", f"--key-file={d}/munge/munge.key", f"--socket={d}/run/munge.sock",
                     f"--pid-file={d}/run/munged.pid", f"--log-file={d}/munge/munged.log",
                     f"--seed-file={d}/munge/seed", pidfile=d / "run" / "munged.pid")
        self._daemon("slurmctld", "-i", pidfile=d / "run" / "slurmctld.pid")
        self._daemon("slurmd", "-N", "localhost", pidfile=d / "run" / "slurmd.pid")
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            res = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True)
            state = res.stdout.strip()
            if state.startswith("idle"):
                return self
            time.sleep(0.5)
        log = (d / "slurmctld.log").read_text()[-2000:] if (d / "slurmctld.log").exists() else ""
        self.stop()
        raise RuntimeError(f"the test Slurm node did not become idle (state {state!r}):\n{log}")

    # ---- queries ------------------------------------------------------------------------------
    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still holds (all of them, with MinJobAge an hour), as
        `scontrol show job -o` fields: JobName, Comment, Partition, JobState, TresPerJob, ..."""
        res = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True)
        out = []
        for line in res.stdout.splitlines():
            if not line.startswith("JobId="):
                continue
            fields = {}
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    fields[k] = v
            out.append(fields)
        return out

    def completed_job_ids(self) -> set[str]:
        """Job ids sacct reports COMPLETED from the job-completion record (`sacct -c`)."""
        res = subprocess.run(["sacct", "-c", "-n", "-P", "-o", "JobID,State"], capture_output=True,
                             text=True, check=True)
        return {line.split("|")[0] for line in res.stdout.splitlines() if line.endswith("|COMPLETED")}

    # ---- tear-down ----------------------------------------------------------------------------
    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True)
        for pid in reversed(self._pids):  # slurmd, slurmctld, munged: the ones started here
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self._pids.clear()
        for name in ("slurm.conf", "gres.conf"):
            target = SYSTEM_CONF.parent / name
            if target.is_file() and MARK in target.read_text(errors="replace"):
                target.unlink()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
