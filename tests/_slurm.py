"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd in a temp folder.

:func:`start` brings the three daemons up from Debian's ``slurm-wlm`` and ``munge``
with a configuration of their own (nothing under /etc is read or written) and
returns a :class:`SlurmCluster`; ``stop()`` cancels every job and stops the
daemons. :func:`unavailable` says why a cluster cannot start here (not root, the
binaries missing), for a skip.

The node offers :data:`CPUS` CPUs whatever the machine has (``config_overrides``),
so that several one-CPU jobs run at once on a small machine, and :data:`GPUS`
"GPUs": generic resources backed by plain files, for which Slurm sets
``CUDA_VISIBLE_DEVICES`` in a job that asks for them, as it does for real ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CPUS = 4
GPUS = 2
MEMORY_MB = 4096
PARTITION = "labkit"
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"}
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")

CONFIG = """\
ClusterName=labkit
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={base}/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=3600
KillWait=2
MpiDefault=none
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:{gpus} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def unavailable() -> str | None:
    """Why a Slurm cluster cannot start on this machine, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    missing = [name for name in BINARIES if _which(name) is None]
    if missing:
        return (
            f"Slurm is not installed ({', '.join(missing)} missing; Debian: "
            "apt-get install slurm-wlm munge)"
        )
    return None


@dataclass
class SlurmCluster:
    """A running single-node cluster; its client tools read ``env["SLURM_CONF"]``."""

    base: Path
    node: str
    env: dict[str, str]
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *command: str) -> str:
        """A Slurm client command's standard output (it must succeed)."""
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[dict[str, str]]:
        """The jobs Slurm knows and has not forgotten: id, name, state, one dict each."""
        out = self.run("squeue", "-h", "-o", "%i|%j|%T")
        return [
            dict(zip(("id", "name", "state"), line.split("|"), strict=True))
            for line in out.splitlines()
            if line.strip()
        ]

    def log(self) -> str:
        """The two daemons' logs, for a failure's message."""
        return "\n".join(
            (self.base / "log" / name).read_text(errors="replace")[-3000:]
            for name in ("slurmctld.log", "slurmd.log")
            if (self.base / "log" / name).exists()
        )

    def stop(self) -> None:
        """Cancel every job, stop the daemons (TERM, then KILL), remove the folder."""
        # A controller that is gone already: the daemons' stop below ends the jobs.
        with contextlib.suppress(OSError, subprocess.TimeoutExpired, RuntimeError):
            subprocess.run(
                ["scancel", "--full", "--user", "root"],
                env=self.env,
                capture_output=True,
                timeout=10,
                check=False,
            )
            # Jobs end cleanly while slurmd is up (their step daemons report to it).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                job["state"] in LIVE_STATES for job in self.jobs()
            ):
                time.sleep(0.2)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
        for daemon in reversed(self.daemons):
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=5)
        _kill_job_processes(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


def start() -> SlurmCluster:
    """Start munged, slurmctld and slurmd in a fresh temp folder; wait for the node.

    Raises:
        RuntimeError: A daemon did not come up (its log is in the message).
    """
    base = Path(tempfile.mkdtemp(prefix="labkit-slurm-"))
    # Clients that are not root read the munge socket through these folders:
    # mkdtemp's 0700 would break them ("Protocol authentication error").
    base.chmod(0o755)
    for name in ("etc", "state", "spool", "log", "run", "munge", "dev", "jobs"):
        (base / name).mkdir(mode=0o755)
    node = socket.gethostname().split(".")[0]
    env = {**os.environ, "SLURM_CONF": str(base / "etc" / "slurm.conf")}
    cluster = SlurmCluster(base=base, node=node, env=env)
    try:
        key = base / "munge" / "munge.key"
        subprocess.run(
            [_need("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True
        )
        key.chmod(0o400)
        cluster.daemons.append(
            subprocess.Popen(
                [
                    _need("munged"),
                    "-f",
                    "--foreground",
                    f"--key-file={key}",
                    f"--socket={base}/munge/munge.socket.2",
                    f"--pid-file={base}/munge/munged.pid",
                    f"--log-file={base}/log/munged.log",
                    f"--seed-file={base}/munge/munged.seed",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_for(lambda: (base / "munge" / "munge.socket.2").exists(), "munged's socket", 10)
        for index in range(GPUS):
            # Slurm takes only device files for a GPU: character devices with
            # /dev/null's numbers serve (nothing opens them).
            os.mknod(base / "dev" / f"gpu{index}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        (base / "etc" / "gres.conf").write_text(
            f"NodeName={node} Name=gpu File={base}/dev/gpu[0-{GPUS - 1}]\n"
        )
        (base / "etc" / "slurm.conf").write_text(
            CONFIG.format(
                base=base,
                node=node,
                cpus=CPUS,
                gpus=GPUS,
                memory=MEMORY_MB,
                partition=PARTITION,
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
            )
        )
        conf = env["SLURM_CONF"]
        for daemon in ("slurmctld", "slurmd"):
            args = [_need(daemon), "-D", "-f", conf]
            if daemon == "slurmctld":
                args.insert(2, "-c")  # a clean start: no state from an earlier cluster
            cluster.daemons.append(
                subprocess.Popen(
                    args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        _wait_for(lambda: _node_state(cluster) == "idle", "the node to be idle", 30)
    except BaseException as exc:
        log = cluster.log()
        cluster.stop()
        raise RuntimeError(f"the Slurm cluster did not start: {exc}\n{log}") from exc
    return cluster


def _node_state(cluster: SlurmCluster) -> str:
    for daemon in cluster.daemons:
        if daemon.poll() is not None:
            raise RuntimeError(f"{daemon.args[0]} exited with {daemon.returncode}")
    try:
        return cluster.run("sinfo", "-h", "-n", cluster.node, "-o", "%T").strip()
    except RuntimeError:
        return ""  # the controller is not answering yet


def _wait_for(ready: object, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def _kill_job_processes(base: Path) -> None:
    """Kill what this cluster's jobs left behind: their step daemons (slurmstepd,
    which wait on a slurmd that is gone) and workers, known by the SLURM_CONF
    they inherited or by ``base`` on their command line."""
    import psutil

    mark = str(base)
    for proc in psutil.process_iter(["cmdline"]):
        try:
            conf = proc.environ().get("SLURM_CONF", "")
            ours = conf.startswith(mark) or any(mark in part for part in proc.info["cmdline"] or ())
            if ours and proc.pid != os.getpid():
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(Path(d, name)) for d in ("/usr/sbin", "/sbin") if Path(d, name).exists()), None
    )


def _need(name: str) -> str:
    path = _which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed")
    return path
