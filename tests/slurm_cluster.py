"""A one-node Slurm cluster on localhost for the tests: munged, slurmctld and slurmd started from
Debian's slurm-wlm and munge packages (.ci/install_slurm.sh), without cgroups
(proctrack/linuxproc, task/none) or accounting, all state in one temporary folder."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


def unavailable_reason():
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (
            f"Slurm/MUNGE binaries absent ({', '.join(missing)}); "
            ".ci/install_slurm.sh installs them"
        )
    if os.geteuid() != 0:
        return (
            "slurmd needs root to start jobs as their user; run the Slurm tests as root "
            "(as CI does)"
        )
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONF = """\
ClusterName=studytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire + 1 s before it may start again (120 s by default).
AuthInfo=socket={d}/munge.sock,cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="slurm")  # short: the MUNGE socket path is limited
        self.procs = []
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)

    def start(self, timeout=60):
        d, host = self.dir, socket.gethostname()
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(d, sub))
        key = os.path.join(d, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        self._spawn(
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={d}/munge.sock",
                f"--key-file={key}",
                f"--pid-file={d}/munged.pid",
                f"--log-file={d}/munged.log",
                f"--seed-file={d}/munged.seed",
            ]
        )
        with open(self.conf, "w") as f:
            f.write(
                CONF.format(
                    host=host,
                    d=d,
                    ctld_port=_free_port(),
                    slurmd_port=_free_port(),
                    cpus=os.cpu_count(),
                )
            )
        self._spawn(["slurmctld", "-D", "-i", "-f", self.conf])
        self._spawn(["slurmd", "-D", "-f", self.conf, "-N", host])
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%T"],
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.stdout.strip() in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"the Slurm test cluster did not come up in {timeout} s; logs in {d}: " + self.logs()
        )

    def _spawn(self, cmd):
        log = open(os.path.join(self.dir, os.path.basename(cmd[0]) + ".out"), "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def logs(self):
        text = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith((".log", ".out")):
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text.append(f"--- {name}\n" + "".join(f.readlines()[-20:]))
        return "\n".join(text)

    def squeue(self):
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %T %j"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        return [line.split() for line in out.stdout.splitlines() if line.strip()]

    def stop(self):
        subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True, check=False)
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
