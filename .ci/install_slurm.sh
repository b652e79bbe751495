#!/usr/bin/env bash
# Installs Slurm's controller and node daemons, MUNGE and iproute2 (Debian/Ubuntu packages), so
# that tests/test_study_multinode.py can start a two-node cluster in network namespaces (ip;
# nsenter and unshare are util-linux's, always there). Needs root (or sudo) and apt; does nothing when slurmctld,
# slurmd, munged and ip are already on PATH.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v ip >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_slurm.sh: no apt-get here; the Slurm tests will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "install_slurm.sh: not root and no sudo; the Slurm tests will be skipped" >&2
        exit 0
    fi
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# slurm-wlm: slurmctld + slurmd + client commands; munge: the authentication daemon they use;
# iproute2: the namespaces, bridge and veth pairs of the two-node cluster.
$SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge iproute2
