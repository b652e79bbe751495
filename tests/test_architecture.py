"""The project's module structure: imports between its modules go one way (no cycle, counting
imports inside functions too), every module imports, and no module outgrows one concept (400
lines)."""

import ast
import functools
import importlib
import os
import re

import pytest

from helpers import ROOT, require_detectron2

PACKAGES = ("pretrain", "detection", "study", "tools")
MAX_LINES = 400


def project_modules():
    """{module name: file path} of every Python module under PACKAGES."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    modules[".".join(parts)] = path
    return modules


def imported_modules(name, path, modules):
    """The project modules that importing module ``name`` imports: every import statement,
    at module level or inside a function, resolved to the modules Python runs for it (a
    submodule's parent packages included, unless ``name`` lives inside them); and the top-level
    names of everything it imports."""
    is_package = os.path.basename(path) == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            targets.add(base)
            # ``from package import name``: a submodule when there is one, else an attribute.
            targets.update(
                f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules
            )
    found = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            # A package that holds ``name`` has started importing before ``name`` runs.
            if module in modules and module != name and not name.startswith(module + "."):
                found.add(module)
    return found, {target.split(".")[0] for target in targets}


@functools.lru_cache(maxsize=None)
def import_graph():
    """({module: the project modules it imports}, {module: the top-level packages it imports})."""
    modules = project_modules()
    graph, packages = {}, {}
    for name, path in modules.items():
        graph[name], packages[name] = imported_modules(name, path, modules)
    return graph, packages


def reachable(graph, start):
    reached, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += graph[module]
    return reached


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert {
        "pretrain.data.build",
        "pretrain.data.device_decode",
        "pretrain.methods.pskd",
        "tools.benchmark",
    } <= set(graph)
    assert "pretrain.data.samplers" in graph["pretrain.methods.base"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_lazy_and_relative_imports(tmp_path):
    # a.py imports b at module level; b imports a inside a function, relatively.
    (tmp_path / "a.py").write_text("from pkg import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import a\n")
    modules = {"pkg": "", "pkg.a": str(tmp_path / "a.py"), "pkg.b": str(tmp_path / "b.py")}
    graph = {
        name: imported_modules(name, path, modules)[0] for name, path in modules.items() if path
    }
    graph["pkg"] = set()
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert find_cycle(graph) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])


def test_methods_import_their_samplers_without_the_input_pipeline():
    reached = reachable(import_graph()[0], "pretrain.methods")
    assert "pretrain.data.samplers" in reached
    assert not reached & {
        "pretrain.data.build",
        "pretrain.data.datasets",
        "pretrain.data.device_decode",
        "pretrain.data.transforms",
    }


@pytest.mark.parametrize("name", sorted(project_modules()))
def test_every_module_imports(name):
    graph, packages = import_graph()
    if any("detectron2" in packages[module] for module in reachable(graph, name)):
        require_detectron2()
    importlib.import_module(name)


def test_modules_stay_under_400_lines():
    long = {}
    for name, path in project_modules().items():
        with open(path, encoding="utf-8") as f:
            lines = len(f.readlines())
        if lines > MAX_LINES:
            long[name] = lines
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def readme_layout():
    """The files the README's Layout block lists, as paths (``pretrain/config/defaults.py``): a
    line names a file or folder (or several, comma-separated) before its description, and its
    indentation places it in the folder listed above it."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = text.split("## Layout", 1)[1].split("```")[1]
    listed, folders = set(), []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        names = re.match(r"((?:[\w./]+(?:, )?)*)", line.strip()).group(1).split(", ")
        if not all(name.endswith((".py", "/")) for name in names):
            continue  # a description's continuation line
        folders = [(i, folder) for i, folder in folders if i < indent]
        prefix = "".join(folder for _, folder in folders)
        for name in names:
            if name.endswith("/"):
                folders.append((indent, name))
            else:
                listed.add(prefix + name)
    return listed


def test_the_readme_layout_lists_every_module():
    """A module added, moved or renamed shows in the README's Layout; a method's own module is
    covered by its registry line there ("one module per METHOD.NAME")."""
    from pretrain.methods import METHODS

    unlisted = {cls.__module__ for cls in METHODS.values()} | {"pretrain.methods.base"}
    modules = {
        os.path.relpath(path, ROOT)
        for name, path in project_modules().items()
        if not name.startswith("tools.")
        and not path.endswith("__init__.py")
        and name not in unlisted
    }
    listed = readme_layout()
    assert "pretrain/config/defaults.py" in listed and "study/slurm.py" in listed
    assert sorted(modules - listed) == []
    stale = [path for path in listed - modules if path.endswith(".py")]
    assert sorted(path for path in stale if not path.startswith("tools/")) == []
