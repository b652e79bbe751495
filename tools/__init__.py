"""Command-line entry points (a package, so that tests can import them by name ahead of the
`tools` package that Detectron2 installs into site-packages)."""
