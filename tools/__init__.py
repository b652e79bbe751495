"""Command-line entry points (a package, so that tests import them ahead of the top-level
``tools`` package that a Detectron2 install puts in site-packages)."""
