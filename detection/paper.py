"""The PS-KD paper's (Kim et al., ICCV 2021) numbers for ResNet-152 that our reports set beside
ours: Table 4 (ImageNet validation) and Table 5 (Faster R-CNN on PASCAL VOC07 test), keyed by
our method labels (``pretrain.methods.method_label``). One run per backbone in the paper.
tests/test_paper_values.py checks every value against the paper's printed tables."""

from pretrain.methods import method_label

ARCH = "resnet152"
# Table 5 was scored on the whole VOC2007 test set, Table 4 on the ImageNet validation set.
VOC07_TEST_IMAGES = 4952
IMAGENET_VAL_IMAGES = 50000

# Table 5: mAP at IoU > 0.5 (%), VOC07 11-point.
TABLE5_AP50 = {
    method_label("baseline"): 78.26,
    method_label("ls"): 78.44,
    method_label("cskd"): 78.33,
    method_label("tfkd"): 78.28,
    method_label("pskd"): 79.50,
    method_label("pskd", cutmix=True): 79.72,
}

# Table 4: the metrics of pretrain.metrics it reports, in its column order.
TABLE4_METRICS = ("top1_err", "top5_err", "nll", "ece", "aurc")
_TABLE4_ROWS = (
    # method, CutMix, top-1 err (%), top-5 err (%), NLL, ECE (%), AURC (x1000)
    ("baseline", False, 22.19, 6.19, 0.88, 3.84, 61.79),
    ("ls", False, 21.73, 5.85, 0.92, 3.91, 68.24),
    ("cskd", False, 21.61, 5.92, 0.90, 5.79, 62.12),
    ("tfkd", False, 22.76, 6.43, 0.91, 4.70, 65.28),
    ("pskd", False, 21.41, 5.85, 0.84, 2.51, 61.01),
    ("baseline", True, 21.04, 5.56, 0.81, 2.19, 58.43),
    ("ls", True, 20.77, 5.36, 0.85, 1.90, 63.45),
    ("cskd", True, 21.08, 5.53, 0.83, 1.56, 59.02),
    ("tfkd", True, 22.00, 5.93, 0.85, 2.18, 62.57),
    ("pskd", True, 20.76, 5.34, 0.80, 0.54, 58.25),
)
TABLE4 = {
    method_label(name, cutmix): dict(zip(TABLE4_METRICS, values))
    for name, cutmix, *values in _TABLE4_ROWS
}
# The order of the paper's rows, Table 5's six then Table 4's other four.
METHOD_ORDER = list(TABLE5_AP50) + [m for m in TABLE4 if m not in TABLE5_AP50]
