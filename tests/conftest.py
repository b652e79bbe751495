"""pytest's hooks and the fixtures many test modules use; plain helpers are in helpers.py."""

import collections
import json
import logging
import multiprocessing.process
import os
import subprocess

import pytest

# `make test-unit` sets it: the unit tier then refuses to start a process (refuse_processes).
UNIT_TIER = os.environ.get("UNIT_TIER") == "1"


# Seconds each test file took on its worker in a recorded `make test` (`make test-durations`
# rewrites it): the order in which the workers take the files comes from it.
DURATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durations.json")


def pytest_addoption(parser):
    parser.addoption(
        "--record-durations",
        metavar="FILE",
        help="write each test file's seconds (setup, call and teardown of its tests) to FILE",
    )


def pytest_collection_modifyitems(config, items):
    """The order in which `make test`'s workers take the files (``--dist loadfile
    --no-loadscope-reorder``: each takes the next whole file): the Slurm cluster's files first
    (the two-node study's is the suite's longest, mostly waiting on its jobs while the other
    workers compute), then the longest first as tests/durations.json recorded them, so that the
    workers end together; files it does not know (new ones) next, those with slow tests first,
    each group by its number of tests. A file's own order is kept."""
    try:
        with open(DURATIONS) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        recorded = {}
    cluster = {item.path for item in items if item.get_closest_marker("cluster")}
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    count = collections.Counter(item.path for item in items)

    def key(item):
        name = os.path.relpath(item.path, config.rootpath)
        known = name in recorded
        return (
            item.path not in cluster,
            not known,
            -recorded.get(name, 0.0),
            item.path not in slow,
            -count[item.path],
        )

    items.sort(key=key)  # stable: the files of equal keys, and each file's tests, keep their order


_durations = collections.Counter()


def pytest_runtest_logreport(report):
    # Every phase of every test, also from pytest-xdist's workers (their reports come here).
    _durations[report.nodeid.split("::")[0]] += report.duration


def pytest_sessionfinish(session):
    path = session.config.getoption("record_durations")
    if path and not hasattr(session.config, "workerinput"):  # pytest-xdist's controller, or alone
        with open(path, "w") as f:
            json.dump({k: round(v, 1) for k, v in sorted(_durations.items())}, f, indent=1)
            f.write("\n")


@pytest.fixture(scope="session", autouse=UNIT_TIER)
def refuse_processes():
    """Under the unit tier, starting a process fails the test that does it, with what to do: the
    tier stays fast only if every test that starts tools, torchrun, Slurm or DataLoader workers is
    marked integration, and a test that is not would otherwise just make it slower, unnoticed.
    Session scope, so that a module fixture that runs a tool is refused too; pytest.fail raises an
    exception that code under test catching Exception does not swallow."""

    def refuse(what):
        pytest.fail(
            f"{what} under the unit tier (UNIT_TIER=1, make test-unit): a test that starts a "
            "process belongs to the integration tier; mark it @pytest.mark.integration (or its "
            "module: pytestmark = pytest.mark.integration). See docs/testing.md.",
            pytrace=False,
        )

    def execute_child(self, args, *_):
        refuse(f"started a subprocess ({args!r})")

    def start(self):
        refuse(f"started a multiprocessing process ({self.name})")

    with pytest.MonkeyPatch.context() as patch:
        # Every subprocess (run, check_output, Popen) passes through _execute_child, and every
        # multiprocessing process (torch's spawn, DataLoader workers) through BaseProcess.start.
        patch.setattr(subprocess.Popen, "_execute_child", execute_child)
        patch.setattr(multiprocessing.process.BaseProcess, "start", start)
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's in-process work (as OMP_NUM_THREADS=1 gives the tools
    the tests run): on a shared 2-core machine two threads per tiny convolution are many times
    slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The root logger as the session found it (pytest's own capture handlers come and go per phase).
_ROOT_LOGGING = (list(logging.getLogger().handlers), logging.getLogger().level)


@pytest.fixture(autouse=True)
def restore_logging():
    """After every test, the root logger's handlers and level as the session found them: a
    Trainer or a tool run in this process replaces them with its own (stdout and its run's
    log.txt), in a test or in a module fixture, and a later test in the same worker would log
    into that file, whose folder pytest removes once its test passed (pytest.ini)."""
    yield
    root = logging.getLogger()
    handlers, level = _ROOT_LOGGING
    for handler in list(root.handlers):
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small generated ImageFolder tree (4 classes, 96 train / 32 val JPEGs)."""
    from pretrain.data.synthetic import write_imagefolder

    return write_imagefolder(
        str(tmp_path_factory.mktemp("synthetic")),
        num_classes=4,
        train_per_class=24,
        val_per_class=8,
        size=64,
    )


@pytest.fixture(scope="session")
def random_r18_pkl(tmp_path_factory):
    """A converted (Detectron2 .pkl), randomly initialised ResNet-18 (seeded): the backbone of the
    tiny detection runs."""
    import torch
    import torchvision

    from detection.convert import convert

    folder = tmp_path_factory.mktemp("r18")
    torch.manual_seed(0)
    torch.save(
        {"model": torchvision.models.resnet18(weights=None).state_dict()},
        folder / "model_final.pth",
    )
    convert(str(folder / "model_final.pth"), str(folder / "r18.pkl"))
    return str(folder / "r18.pkl")
