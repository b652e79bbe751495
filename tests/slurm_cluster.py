"""A two-node Slurm cluster on this one machine for the tests: munged, slurmctld and two slurmd
(node1, node2; 2 CPUs each) from Debian's slurm-wlm and munge packages (.ci/install_slurm.sh),
without cgroups (proctrack/linuxproc, task/none) or accounting, all state in one temporary
folder; each daemon in a network namespace of its own, joined by a bridge, so that a job's
processes on the two nodes talk over a network as on a real cluster (torchrun's rendezvous, gloo).

The namespaces hold a private /24 that exists only inside them, with no default route: nothing
leaves them. Every daemon has its own hostname and /etc/hosts (``unshare --uts --mount``, a
hosts file bind-mounted in a private mount namespace) and enters its network with ``nsenter``:
``ip netns exec`` remounts /sys, which hides /sys/fs/cgroup, and slurmd 22.05 then refuses to
start. Slurm's clients (sbatch, srun, squeue, scontrol, and tools/study.py that calls them) run
in the controller's namespace (``command``): slurmd connects back to srun. The files (the
checkout, the virtualenv, temporary folders) are this machine's, as on a shared file system.
munged runs outside: its socket is a file.

Namespaces are named after the folder, which names the test process that made it: what a
crashed test left (namespaces, their processes, munged) is removed before a cluster starts."""

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time

from study.state import pid_alive

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
NET = "10.250.0"  # inside the namespaces only
CONTROLLER = ("ctl", f"{NET}.1")
NODES = {"node1": f"{NET}.11", "node2": f"{NET}.12"}
CPUS = 2
PREFIX = "slurmns-"  # of the folder; short: the MUNGE socket path is limited
# Hostname and hosts file first, then the command (sh -c SCRIPT sh HOST HOSTS ARGV...).
ENTER = 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'

# Slurm's default ports: every daemon has a network of its own. %n: the node's name, so that
# the two slurmd share the folder.
CONF = """\
ClusterName=studytest
SlurmctldHost={ctl}({ctl_addr})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire + 1 s before it may start again (120 s by default).
AuthInfo=socket={d}/munge.sock,cred_expire=5
# The scheduler looks at pending jobs every second (a requeued job starts again in seconds).
SchedulerParameters=sched_interval=1,bf_interval=1
# A node that stops answering is DOWN after this long (300 s by default), and its jobs requeued.
SlurmdTimeout=10
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
{nodes}
PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


def unavailable_reason():
    """Why the cluster cannot start here, or None."""
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
    missing = [b for b in ("ip", "nsenter", "unshare", "mount") if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} absent (iproute2, util-linux): no network namespaces"
    return None


class NamespacesUnavailable(RuntimeError):
    """This machine does not let the test create network namespaces (a container without
    CAP_SYS_ADMIN or CAP_NET_ADMIN, say)."""


def _ip(*args, check=True):
    out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise NamespacesUnavailable(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _netns_pids(ns):
    return [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]


def _kill(pids):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _stale(name):
    """Whether the test process that made a folder or namespace named ``slurm2-<pid>-...`` is
    gone (a name that does not parse is not ours to remove)."""
    try:
        return not pid_alive(int(name[len(PREFIX) :].split("-")[0]))
    except ValueError:
        return False


def remove_stale():
    """Remove what clusters of test processes that are gone left: every process in their
    namespaces, the namespaces, the munged of their pid file, their folder."""
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    for ns in netns:
        if ns.startswith(PREFIX) and _stale(ns):
            _kill(_netns_pids(ns))
            _ip("netns", "del", ns, check=False)
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*")):
        if not _stale(os.path.basename(folder)):
            continue
        for pid_file in glob.glob(os.path.join(folder, "*.pid")):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(pid_file) as f:
                    pid = int(f.read().split()[0])
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if folder.encode() in f.read():  # not a later process given the same pid
                        _kill([pid])
        shutil.rmtree(folder, ignore_errors=True)


class TwoNodeCluster:
    """The cluster: ``start``, Slurm's clients (``run``, ``squeue``), a node lost and revived,
    ``stop``."""

    def __init__(self):
        remove_stale()
        self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
        self.procs = []
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        tag = os.path.basename(self.dir)
        self.ns = {host: f"{tag}-{host}" for host in [CONTROLLER[0], *NODES]}
        self.hosts = os.path.join(self.dir, "hosts")

    def start(self, timeout=60):
        try:
            self._network()
        except NamespacesUnavailable:
            self.stop()
            raise
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
            f.write(self._conf())
        self._spawn(self.command(["slurmctld", "-D", "-i", "-f", self.conf]), "slurmctld")
        for node in NODES:
            self.start_node(node)
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.split()
            if len(out) == len(NODES) and all(s in ("idle", "mixed", "allocated") for s in out):
                return self
            time.sleep(0.2)
        logs = self.logs()
        self.stop()
        raise RuntimeError(
            f"the Slurm test cluster did not come up in {timeout} s; logs in {d}: " + logs
        )

    def _network(self):
        """The controller's namespace holds the bridge; each node's is joined to it by a veth
        pair (``<node>`` on the bridge, ``eth0`` in the node)."""
        ctl, ctl_addr = CONTROLLER
        with open(self.hosts, "w") as f:
            f.write("127.0.0.1 localhost\n")
            for host, addr in [CONTROLLER, *NODES.items()]:
                f.write(f"{addr} {host}\n")
        _ip("netns", "add", self.ns[ctl])
        _ip("-n", self.ns[ctl], "link", "add", "br0", "type", "bridge")
        _ip("-n", self.ns[ctl], "addr", "add", f"{ctl_addr}/24", "dev", "br0")
        for dev in ("br0", "lo"):
            _ip("-n", self.ns[ctl], "link", "set", dev, "up")
        bridge = ("-n", self.ns[ctl], "link")
        for node, addr in NODES.items():
            ns = self.ns[node]
            _ip("netns", "add", ns)
            _ip(*bridge, "add", node, "type", "veth", "peer", "eth0", "netns", ns)
            _ip(*bridge, "set", node, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def inside(self, host, argv):
        """``argv`` as run on ``host`` (ctl, node1, node2): its network, hostname, hosts file."""
        return [
            "nsenter",
            f"--net=/run/netns/{self.ns[host]}",
            "unshare",
            "--uts",
            "--mount",
            "sh",
            "-c",
            ENTER,
            "sh",
            host,
            self.hosts,
            *argv,
        ]

    def command(self, argv):
        return self.inside(CONTROLLER[0], argv)

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

    def _conf(self):
        nodes = "\n".join(
            f"NodeName={node} NodeAddr={addr} CPUs={CPUS} RealMemory=4000 State=UNKNOWN"
            for node, addr in NODES.items()
        )
        ctl, ctl_addr = CONTROLLER
        return CONF.format(
            d=self.dir, ctl=ctl, ctl_addr=ctl_addr, nodes=nodes, names=",".join(NODES)
        )

    def start_node(self, node):
        self._spawn(self.inside(node, ["slurmd", "-D", "-f", self.conf, "-N", node]), node)

    def pids(self, host):
        """Every process on ``host`` (its network namespace's)."""
        return _netns_pids(self.ns[host])

    def lose(self, node):
        """``node`` fails: its link goes down (nothing it sends arrives, as from a node whose
        power is cut), then every process on it is killed (slurmd, the job steps)."""
        _ip("-n", self.ns[node], "link", "set", "eth0", "down")
        _kill(self.pids(node))

    def revive(self, node):
        """``node`` back: its link up and slurmd started again (it returns to service once it
        registers: ReturnToService=2)."""
        _ip("-n", self.ns[node], "link", "set", "eth0", "up")
        self.start_node(node)

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
        for host, ns in self.ns.items():  # the job steps too, which the daemons may leave
            _kill(self.pids(host))
            _ip("netns", "del", ns, check=False)
