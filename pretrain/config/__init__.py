"""The pretraining config: every key with its default (``defaults``), what a key is declared
with (``types``), and the checks run once when a config is assembled (``checks``)."""
