"""Multi-node paths on a real two-node Slurm cluster in network namespaces on this machine
(tests/slurm_cluster2.py). Skipped with the reason where Slurm, MUNGE, root or network
namespaces are missing; under CI=true that fails instead."""

import pytest

from conftest import require_detectron2, skip_unless_ci
from slurm_cluster2 import NODES, NamespacesUnavailable, TwoNodeCluster, unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
if unavailable_reason():
    skip_unless_ci(unavailable_reason())
require_detectron2()


@pytest.fixture(scope="module")
def cluster():
    c = TwoNodeCluster()
    try:
        c.start()
    except NamespacesUnavailable as exc:
        skip_unless_ci(f"no network namespaces here: {exc}")
    yield c
    c.stop()


def test_one_task_on_each_node(cluster):
    out = cluster.run(["srun", "-N2", "hostname"], check=True)
    assert sorted(out.stdout.split()) == sorted(NODES)
