"""tools/install_detectron2.sh where Detectron2 cannot be built: one paragraph saying why and how to
fix it, the reason recorded for the tests' skip message, exit 0 (the rest of the venv stays usable)
except under CI=true, and no stamp (so the next `make venv` tries again)."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.integration

SCRIPT = os.path.join(ROOT, "tools", "install_detectron2.sh")
COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"


@pytest.fixture
def venv(tmp_path):
    """A folder shaped like a venv whose python is this interpreter (nothing is installed)."""
    os.makedirs(tmp_path / "venv" / "bin")
    os.symlink(sys.executable, tmp_path / "venv" / "bin" / "python")
    return tmp_path / "venv"


def install(venv, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "DETECTRON2_SRC", "CXX")}
    environ.update(env)
    stamp = venv / f".detectron2-{COMMIT}"
    proc = subprocess.run(
        ["bash", SCRIPT, str(venv / "bin" / "python"), COMMIT, str(stamp)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, stamp


@pytest.mark.parametrize(
    "env, why",
    [
        (
            {"DETECTRON2_SRC": "/nonexistent/detectron2"},
            "DETECTRON2_SRC=/nonexistent/detectron2 does not exist",
        ),
        ({"CXX": "no-such-compiler"}, "no C++ compiler found (no-such-compiler)"),
    ],
)
def test_unbuildable_detectron2_is_explained_and_recorded(venv, env, why):
    proc, stamp = install(venv, **env)
    assert proc.returncode == 0, proc.stderr
    assert f"Detectron2 is not installed: {why}" in proc.stderr
    assert "DETECTRON2_SRC=/path/to/detectron2" in proc.stderr and COMMIT in proc.stderr
    with open(venv / "detectron2-unavailable.txt") as f:
        assert why in f.read()
    assert not stamp.exists()


def test_unbuildable_detectron2_fails_under_ci(venv):
    proc, stamp = install(venv, CI="true", DETECTRON2_SRC="/nonexistent/detectron2")
    assert proc.returncode == 1
    assert "error: CI=true and Detectron2 could not be installed" in proc.stderr
    assert not stamp.exists()
