"""The VOC annotation reader at its limits: the box check's bounds (one-pixel boxes, coordinates
at 0 and at size + 1 accepted; size + 2 and inverted boxes refused), integer image sizes, the
evaluator's fields required only when asked for, a blank tag, and the registered metadata."""

import pytest

from helpers import require_detectron2

require_detectron2()

from detectron2.data import MetadataCatalog  # noqa: E402

from detection.voc import VOCFormatError, read_annotation, register_voc  # noqa: E402

WIDTH, HEIGHT = 10, 8


def _annotation(
    tmp_path, box, fields="<pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
):
    x0, y0, x1, y1 = box
    path = tmp_path / "a.xml"
    path.write_text(
        f"<annotation><size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>"
        f"<object><name>dog</name>{fields}<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>"
    )
    return str(path)


@pytest.mark.parametrize(
    "box",
    [
        [3, 4, 3, 4],  # one pixel: xmax == xmin, ymax == ymin
        [0, 0, 5, 5],  # 0-based coordinates at the top-left corner
        [1, 1, WIDTH + 1, HEIGHT + 1],  # one past the bottom-right corner
    ],
)
def test_boxes_within_one_pixel_of_slack_are_read(tmp_path, box):
    for eval_fields in (False, True):
        objects = read_annotation(_annotation(tmp_path, box), eval_fields=eval_fields)[2]
        assert objects == [("dog", box, 0)]


@pytest.mark.parametrize(
    "box, problem",
    [
        ([5, 2, 4, 6], "empty box"),  # xmax < xmin, y fine
        ([2, 5, 6, 4], "empty box"),  # ymax < ymin, x fine
        ([-1, 1, 5, 5], "outside"),
        ([1, -1, 5, 5], "outside"),
        ([1, 1, WIDTH + 2, 5], "outside"),
        ([1, 1, 5, HEIGHT + 2], "outside"),
    ],
)
def test_boxes_beyond_the_slack_are_refused(tmp_path, box, problem):
    with pytest.raises(VOCFormatError, match=problem):
        read_annotation(_annotation(tmp_path, box))


def test_sizes_are_integers_and_training_needs_no_evaluator_fields(tmp_path):
    path = _annotation(tmp_path, [1, 1, 5, 5], fields="")
    height, width, objects = read_annotation(path)
    assert (height, width) == (HEIGHT, WIDTH) and type(height) is int and type(width) is int
    assert objects == [("dog", [1.0, 1.0, 5.0, 5.0], 0)]
    with pytest.raises(VOCFormatError, match="has no <pose>"):
        read_annotation(path, eval_fields=True)


def test_a_blank_tag_is_missing(tmp_path):
    path = _annotation(
        tmp_path,
        [1, 1, 5, 5],
        fields="<pose>  </pose><truncated>0</truncated><difficult>0</difficult>",
    )
    with pytest.raises(VOCFormatError, match="has no <pose>"):
        read_annotation(path, eval_fields=True)


def test_registered_splits_name_their_evaluator_year_and_split(tmp_path):
    register_voc(str(tmp_path))
    meta = MetadataCatalog.get("voc_2007_test")
    assert (meta.evaluator_type, meta.year, meta.split) == ("pascal_voc", 2007, "test")
    assert meta.dirname == str(tmp_path / "VOC2007")


def test_the_evaluator_needs_integer_coordinates_and_training_reads_fractions(tmp_path):
    """voc_eval reads coordinates with int(): a fractional one is named up front for the
    evaluator; the training loader reads it as a float."""
    path = _annotation(tmp_path, [1, 1, 5.5, 5])
    assert read_annotation(path)[2] == [("dog", [1.0, 1.0, 5.5, 5.0], 0)]
    with pytest.raises(VOCFormatError, match="<xmax> is '5.5', not an integer"):
        read_annotation(path, eval_fields=True)
    coords = read_annotation(_annotation(tmp_path, [1, 1, 5, 5]), eval_fields=True)[2][0][1]
    assert [type(v) for v in coords] == [int] * 4


def test_difficult_is_read_for_training_when_present(tmp_path):
    path = _annotation(tmp_path, [1, 1, 5, 5], fields="<difficult>1</difficult>")
    assert read_annotation(path)[2] == [("dog", [1.0, 1.0, 5.0, 5.0], 1)]


@pytest.mark.parametrize("tag", ["truncated", "difficult"])
def test_the_evaluator_needs_integer_flags(tmp_path, tag):
    flags = {"truncated": "0", "difficult": "0", tag: "0.5"}
    fields = "<pose>Unspecified</pose>" + "".join(f"<{k}>{v}</{k}>" for k, v in flags.items())
    with pytest.raises(VOCFormatError, match=f"<{tag}> is '0.5', not an integer"):
        read_annotation(_annotation(tmp_path, [1, 1, 5, 5], fields=fields), eval_fields=True)
