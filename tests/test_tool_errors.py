"""Every command-line tool ends a user's mistake one way: through pretrain.cli.tool, with one
``error:`` line and status 1 (or one ``interrupted`` line on Ctrl-C). Each tools/*.py's ``main`` is
wrapped by it, and nothing else prints an ``error:`` line of its own."""

import ast
import glob
import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import kill_tree, require_detectron2
from pretrain.cli import tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(
    p for p in glob.glob(os.path.join(ROOT, "tools", "*.py")) if not p.endswith("__init__.py")
)
# The tools' own code and the packages they run: any ``sys.exit("error: ...")`` here would be a
# second error path.
SOURCES = TOOLS + sorted(
    p
    for pkg in ("pretrain", "detection", "study")
    for p in glob.glob(os.path.join(ROOT, pkg, "*.py"))
)


def defines_main(path):
    with open(path) as f:
        return any(
            isinstance(node, ast.FunctionDef) and node.name == "main"
            for node in ast.parse(f.read()).body
        )


@pytest.mark.parametrize("path", [p for p in TOOLS if defines_main(p)], ids=os.path.basename)
def test_every_tool_main_is_wrapped_by_tool(path):
    if os.path.basename(path) == "train_net.py":
        require_detectron2()
    # By path: Detectron2's wheel may install a ``tools`` package of its own.
    spec = importlib.util.spec_from_file_location("tool_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Every function ``tool`` wraps runs the same wrapper code around the function it was given.
    assert module.main.__code__ is tool(lambda: None).__code__, f"{path}: main is not @tool"
    assert module.main.__wrapped__.__name__ == "main"


def error_exits(path):
    """``(line, exception handled)`` of each ``sys.exit`` whose argument starts with ``error:``
    (the handler's exception type name, None outside an ``except``)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    found = []

    def visit(node, handled):
        if isinstance(node, ast.ExceptHandler):
            handled = ast.unparse(node.type) if node.type is not None else "BaseException"
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "sys.exit"
            and node.args
            and isinstance(node.args[0], (ast.JoinedStr, ast.Constant))
            and ast.unparse(node.args[0]).lstrip("f").strip("'\"").startswith("error:")
        ):
            found.append((node.lineno, handled))
        for child in ast.iter_child_nodes(node):
            visit(child, handled)

    visit(tree, None)
    return found


def test_no_error_line_of_its_own():
    """The exceptions: ``tool`` itself, and tools/study.py's stage that failed (its tool already
    printed the cause) or a second study on the same output root, both RuntimeErrors."""
    allowed = {("pretrain/cli.py", "EXPECTED_ERRORS"), ("tools/study.py", "RuntimeError")}
    found = {
        (os.path.relpath(path, ROOT), handled): line
        for path in SOURCES
        for line, handled in error_exits(path)
    }
    assert set(found) <= allowed, found
    assert set(found) == allowed  # the scan itself finds what it should


@pytest.mark.integration
def test_ctrl_c_is_one_interrupted_line(tmp_path):
    """Here tools/make_synthetic_data.py, stopped while it writes images (any tool would do)."""
    out = tmp_path / "voc"
    proc = subprocess.Popen(
        [sys.executable, "tools/make_synthetic_data.py", "voc", str(out), "--trainval07", "100000"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        images, deadline = out / "VOC2007" / "JPEGImages", time.monotonic() + 60
        while not (images.is_dir() and any(images.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        kill_tree(proc.pid)
    assert (proc.returncode, stderr) == (128 + signal.SIGINT, "interrupted (SIGINT)\n")
