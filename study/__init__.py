"""Studies: backbones x seeds from pretraining to Table 5, as one resumable command
(tools/study.py)."""
