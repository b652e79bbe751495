"""The training engine: the Trainer (``trainer``), what it builds from the config besides data and
method (``build``: module, optimizer, AMP; ``lr_schedule``), and what a run reports (``events``)."""
