"""A two-node Slurm cluster on this one machine: slurmctld and two slurmd (node1, node2; 2 CPUs
each), each in a network namespace of its own joined by a bridge, so that a job's processes on
the two nodes talk over a network as on a real cluster (torchrun's rendezvous, gloo).

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

from slurm_cluster import SlurmCluster
from slurm_cluster import unavailable_reason as slurm_unavailable
from study.state import pid_alive

NET = "10.250.0"  # inside the namespaces only
CONTROLLER = ("ctl", f"{NET}.1")
NODES = {"node1": f"{NET}.11", "node2": f"{NET}.12"}
CPUS = 2
PREFIX = "slurm2-"
# Hostname and hosts file first, then the command (sh -c SCRIPT sh HOST HOSTS ARGV...).
ENTER = 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'

# Slurm's default ports: every daemon has a network of its own.
CLUSTER = """\
SlurmctldHost={ctl}({ctl_addr})
# A node that stops answering is DOWN after this long (300 s by default), and its jobs requeued.
SlurmdTimeout=10
{nodes}
PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


def unavailable_reason():
    reason = slurm_unavailable()
    if reason:
        return reason
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


class TwoNodeCluster(SlurmCluster):
    prefix = f"{PREFIX}{os.getpid()}-"

    def __init__(self):
        remove_stale()
        super().__init__()
        self.nodes = list(NODES)
        tag = os.path.basename(self.dir)
        self.ns = {host: f"{tag}-{host}" for host in [CONTROLLER[0], *NODES]}
        self.hosts = os.path.join(self.dir, "hosts")

    def start(self, timeout=60):
        try:
            self._network()
        except NamespacesUnavailable:
            self.stop()
            raise
        return super().start(timeout)

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

    def cluster_conf(self):
        nodes = "\n".join(
            f"NodeName={node} NodeAddr={addr} CPUs={CPUS} RealMemory=4000 State=UNKNOWN"
            for node, addr in NODES.items()
        )
        return CLUSTER.format(
            ctl=CONTROLLER[0], ctl_addr=CONTROLLER[1], nodes=nodes, names=",".join(NODES)
        )

    def start_daemons(self):
        self._spawn(self.command(["slurmctld", "-D", "-i", "-f", self.conf]), "slurmctld")
        for node in NODES:
            self.start_node(node)

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
        super().stop()
        for host, ns in self.ns.items():  # the job steps too, which the daemons may leave
            _kill(self.pids(host))
            _ip("netns", "del", ns, check=False)
