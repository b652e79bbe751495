"""One list of pretraining metrics: what ``summarize`` computes is what the logs, the detection
report and the study summary show."""

import torch

from pretrain.metrics import METRIC_KEYS, per_sample_stats, summarize


def test_summarize_computes_exactly_the_listed_metrics_in_order():
    logits = torch.randn(20, 7, generator=torch.Generator().manual_seed(0))
    metrics = summarize(per_sample_stats(logits, torch.arange(20) % 7))
    assert tuple(k for k in metrics if k != "num_samples") == METRIC_KEYS


def test_reports_take_their_pretraining_columns_from_the_list():
    from detection.runs import COLUMNS
    from study.summary_tables import CSV_COLUMNS

    assert [c for c in COLUMNS if c.startswith("pretrain_")] == [
        f"pretrain_{k}" for k in METRIC_KEYS
    ]
    assert [
        c[: -len("_mean")] for c in CSV_COLUMNS if c.endswith("_mean") and c != "AP50_mean"
    ] == list(METRIC_KEYS)
