"""The unit tier (`make test-unit`, UNIT_TIER=1) fails a test that starts a process, with the
marker it lacks; the other tiers let it start. Run on a two-test suite with the suite's own
conftest.py, in a pytest of its own."""

import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.integration

# Unmarked tests that start a process each way the refusal covers. The first handles its own
# failures, as code under test may: the refusal must still fail the test.
STARTS_PROCESSES = """
import multiprocessing
import subprocess
import sys


def test_subprocess():
    try:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    except Exception:
        pass


def test_multiprocessing():
    process = multiprocessing.Process(target=int)
    process.start()
    process.join()
"""


@pytest.fixture
def suite(tmp_path):
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), tmp_path)
    (tmp_path / "test_starts_processes.py").write_text(STARTS_PROCESSES)
    return tmp_path


def run_pytest(folder, unit_tier):
    env = {key: value for key, value in os.environ.items() if key != "UNIT_TIER"}
    if unit_tier:
        env["UNIT_TIER"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_unit_tier_fails_a_test_that_starts_a_process_naming_the_marker(suite):
    out = run_pytest(suite, unit_tier=True).stdout
    assert "2 failed" in out, out
    assert "started a subprocess" in out and "started a multiprocessing process" in out, out
    assert "mark it @pytest.mark.integration" in out, out


def test_the_other_tiers_let_it_start_processes(suite):
    proc = run_pytest(suite, unit_tier=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
