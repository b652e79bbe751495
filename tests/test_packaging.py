"""The project as a distribution (pyproject.toml): its dependencies are requirements.txt's and
its packages the project's own."""

import os

import pytest

from helpers import ROOT


def read_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_dependencies_are_those_of_requirements_txt():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        required = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    project = read_pyproject()["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    assert declared == required


def test_packages_are_the_project_s_and_not_tools():
    from setuptools import find_packages

    include = read_pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = set(find_packages(ROOT, include=include))
    assert {"pretrain", "pretrain.methods", "detection", "study"} <= packages
    # An installed `tools` would overwrite the one Detectron2 puts into site-packages.
    assert not {p for p in packages if p.split(".")[0] in ("tools", "tests", "configs")}
