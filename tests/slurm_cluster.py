"""A one-node Slurm cluster on localhost for the tests: munged, slurmctld and slurmd started from
Debian's slurm-wlm and munge packages (.ci/install_slurm.sh), without cgroups
(proctrack/linuxproc, task/none) or accounting, all state in one temporary folder.
tests/slurm_cluster2.py builds its two-node cluster on this class."""

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


# What every test cluster shares; a cluster adds its controller, ports and nodes (%n: the node's
# name, so that several slurmd share the folder).
CONF = """\
ClusterName=studytest
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire + 1 s before it may start again (120 s by default).
AuthInfo=socket={d}/munge.sock,cred_expire=5
# The scheduler looks at pending jobs every second (a requeued job starts again in seconds).
SchedulerParameters=sched_interval=1,bf_interval=1
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
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
"""

ONE_NODE = """\
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """This machine as the one node, the daemons and clients in its own network."""

    prefix = "slurm"  # of the folder; short: the MUNGE socket path is limited

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=self.prefix)
        self.procs = []
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.nodes = [socket.gethostname()]

    def start(self, timeout=60):
        d = self.dir
        os.makedirs(os.path.join(d, "state"))
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
            f.write(CONF.format(d=d) + self.cluster_conf())
        self.start_daemons()
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.split()
            if len(out) == len(self.nodes) and all(
                s in ("idle", "mixed", "allocated") for s in out
            ):
                return self
            time.sleep(0.2)
        logs = self.logs()
        self.stop()
        raise RuntimeError(
            f"the Slurm test cluster did not come up in {timeout} s; logs in {d}: " + logs
        )

    def cluster_conf(self):
        """slurm.conf's lines for the controller, ports and nodes of this cluster."""
        return ONE_NODE.format(
            host=self.nodes[0],
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            cpus=os.cpu_count(),
        )

    def start_daemons(self):
        self._spawn(["slurmctld", "-D", "-i", "-f", self.conf])
        self._spawn(["slurmd", "-D", "-f", self.conf, "-N", self.nodes[0]])

    def command(self, argv):
        """``argv`` as it runs where Slurm's clients reach the controller and the nodes reach
        them back (srun): here, anywhere on this machine."""
        return list(argv)

    def run(self, argv, check=False):
        """A client command (sbatch, squeue, scancel, ...) against this cluster."""
        return subprocess.run(
            self.command(argv), env=self.env, capture_output=True, text=True, check=check
        )

    def _spawn(self, cmd, name=None):
        name = name or os.path.basename(cmd[0])
        log = open(os.path.join(self.dir, name + ".out"), "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def logs(self):
        text = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith((".log", ".out")):
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text.append(f"--- {name}\n" + "".join(f.readlines()[-20:]))
        return "\n".join(text)

    def squeue(self):
        out = self.run(["squeue", "-h", "-o", "%i %T %j"])
        return [line.split() for line in out.stdout.splitlines() if line.strip()]

    def stop(self):
        self.run(["scancel", "--user=root"])
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
