import importlib.util
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_detectron2():
    """Skip the calling test (or module) when Detectron2 is absent, with the reason `make venv`
    recorded; under CI=true its absence fails instead, so CI cannot pass with the detection stage
    unchecked."""
    if importlib.util.find_spec("detectron2") is not None:
        return
    reason_file = os.path.join(sys.prefix, "detectron2-unavailable.txt")
    if os.path.isfile(reason_file):
        with open(reason_file) as f:
            reason = " ".join(f.read().split())
    else:
        reason = "Detectron2 is not installed in this environment (`make venv` installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


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


@pytest.fixture
def restore_logging():
    """The root logger's handlers and level as they were before the test: a Trainer replaces
    them with its own (stdout and the run's log.txt)."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small generated ImageFolder tree (4 classes, 96 train / 32 val JPEGs)."""
    from pretrain.synthetic import write_imagefolder

    return write_imagefolder(str(tmp_path_factory.mktemp("synthetic")), num_classes=4,
                             train_per_class=24, val_per_class=8, size=64)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tool(args, nproc=1, timeout=300, check=True):
    """Run a tool from tools/ in a subprocess (under torchrun when nproc > 1)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port())] + args
    else:
        cmd = [sys.executable] + args
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc
