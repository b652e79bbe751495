"""The paper's numbers our reports print (detection/paper.py) are the paper's: every value is
checked against Tables 4 and 5 as printed in the PS-KD paper (ICCV 2021), copied here row by
row, so that a one-digit typo in detection/paper.py fails."""

import pytest

from detection import paper

# Table 4 (ImageNet validation, ResNet-152): Top-1 Err (%), Top-5 Err (%), NLL, ECE (%), AURC.
TABLE4_TEXT = """\
ResNet-152	22.19	6.19	0.88	3.84	61.79
+ LS	21.73	5.85	0.92	3.91	68.24
+ CS-KD	21.61	5.92	0.90	5.79	62.12
+ TF-KD	22.76	6.43	0.91	4.70	65.28
+ PS-KD	21.41	5.85	0.84	2.51	61.01
+ CutMix	21.04	5.56	0.81	2.19	58.43
+ CutMix + LS	20.77	5.36	0.85	1.90	63.45
+ CutMix + CS-KD	21.08	5.53	0.83	1.56	59.02
+ CutMix + TF-KD	22.00	5.93	0.85	2.18	62.57
+ CutMix + PS-KD	20.76	5.34	0.80	0.54	58.25"""

# Table 5 (Faster R-CNN on VOC07 test): mAP (IoU > 0.5) (%).
TABLE5_TEXT = """\
ResNet-152	78.26
+ LS	78.44
+ CS-KD	78.33
+ TF-KD	78.28
+ PS-KD	79.50
+ PS-KD + CutMix	79.72"""

# The paper's row names in our labels.
LABELS = {
    "ResNet-152": "Baseline",
    "+ LS": "LS",
    "+ CS-KD": "CS-KD",
    "+ TF-KD": "TF-KD",
    "+ PS-KD": "PS-KD",
    "+ CutMix": "Baseline + CutMix",
    "+ CutMix + LS": "LS + CutMix",
    "+ CutMix + CS-KD": "CS-KD + CutMix",
    "+ CutMix + TF-KD": "TF-KD + CutMix",
    "+ CutMix + PS-KD": "PS-KD + CutMix",
    "+ PS-KD + CutMix": "PS-KD + CutMix",
}


def _rows(text):
    rows = [line.split("\t") for line in text.splitlines()]
    return {LABELS[name]: [float(v) for v in values] for name, *values in rows}


def test_table4_has_every_row_and_value_of_the_paper():
    printed = _rows(TABLE4_TEXT)
    assert list(paper.TABLE4) == list(printed)
    for method, values in printed.items():
        assert [paper.TABLE4[method][m] for m in paper.TABLE4_METRICS] == values, method
    assert paper.TABLE4_METRICS == ("top1_err", "top5_err", "nll", "ece", "aurc")


def test_table5_has_every_row_and_value_of_the_paper():
    printed = _rows(TABLE5_TEXT)
    assert paper.TABLE5_AP50 == {method: values[0] for method, values in printed.items()}


@pytest.mark.parametrize("text", [TABLE4_TEXT, TABLE5_TEXT])
def test_every_method_of_the_paper_has_a_place_in_the_report_order(text):
    assert set(_rows(text)) <= set(paper.METHOD_ORDER)
    assert len(paper.METHOD_ORDER) == len(set(paper.METHOD_ORDER)) == 10
