"""The order in which `make test`'s workers take the test files (tests/conftest.py): the Slurm
cluster's files first, then the longest as tests/durations.json recorded them, then the files it
does not know, those with slow tests first; and `--record-durations` writes that record. Run on a
four-file suite with the suite's own conftest.py, in a pytest of its own."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.integration

FILES = {
    "test_short.py": "def test_a():\n    pass\n",
    "test_long.py": "def test_a():\n    pass\n",
    "test_new_slow.py": "import pytest\n\n@pytest.mark.slow\ndef test_a():\n    pass\n",
    "test_new.py": "def test_a():\n    pass\n\n\ndef test_b():\n    pass\n",
    "test_cluster.py": "import pytest\n\npytestmark = pytest.mark.cluster\n\n\ndef test_a():\n"
    "    pass\n",
}


def test_files_run_cluster_first_then_longest_recorded_then_new(tmp_path):
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), tmp_path)
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "durations.json").write_text(
        json.dumps({"test_short.py": 1.0, "test_long.py": 60.0, "test_cluster.py": 5.0})
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"]
        + ["--record-durations", str(tmp_path / "recorded.json"), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ran = list(dict.fromkeys(re.findall(r"^(test_\w+\.py)::", out.stdout, re.M)))
    assert ran == [
        "test_cluster.py",
        "test_long.py",
        "test_short.py",
        "test_new_slow.py",
        "test_new.py",
    ]
    recorded = json.loads((tmp_path / "recorded.json").read_text())
    assert sorted(recorded) == sorted(FILES) and all(v >= 0 for v in recorded.values())
