"""PASCAL VOC for Detectron2: split registration with input checks, and an evaluator that also
returns (and writes) the per-class APs.

Detectron2's own loader reports a missing folder as a bare FileNotFoundError deep in a data
loader and a bad annotation as an ElementTree/AttributeError traceback without the file's name;
on 16,551 files that is hard to act on. This loader produces the same dataset dicts (checked by
tests/test_detection.py) but names the offending path. Its evaluator computes exactly what
PascalVOCDetectionEvaluator computes, with Detectron2's ``voc_eval``, and keeps the per-class
numbers that the original drops.
"""

import os
import tempfile
import xml.etree.ElementTree as ET
from collections import OrderedDict, defaultdict

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import CLASS_NAMES
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import voc_eval
from detectron2.structures import BoxMode
from detectron2.utils import comm

from pretrain.data.images import upright_size
from pretrain.runtime.fileio import atomic_open, atomic_write_json

# The VOC splits Detectron2 registers (detectron2/data/datasets/builtin.py): name, folder, split.
VOC_SPLITS = (
    ("voc_2007_trainval", "VOC2007", "trainval"),
    ("voc_2007_train", "VOC2007", "train"),
    ("voc_2007_val", "VOC2007", "val"),
    ("voc_2007_test", "VOC2007", "test"),
    ("voc_2012_trainval", "VOC2012", "trainval"),
    ("voc_2012_train", "VOC2012", "train"),
    ("voc_2012_val", "VOC2012", "val"),
)


class VOCFormatError(ValueError):
    """A VOC folder or file is missing or malformed; the message names the path."""


def _text(node, tag, path, what):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise VOCFormatError(f"{path}: {what} has no <{tag}>")
    return child.text.strip()


def _number(node, tag, path, what, kind=float):
    text = _text(node, tag, path, what)
    try:
        return kind(text)
    except ValueError:
        raise VOCFormatError(
            f"{path}: {what} <{tag}> is {text!r}, not {'an integer' if kind is int else 'a number'}"
        ) from None


def read_annotation(path, class_names=CLASS_NAMES, eval_fields=False):
    """Parse one VOC annotation file: ``(height, width, [(class, [x0, y0, x1, y1], difficult)])``.

    Boxes are as written (1-based, inclusive). ``eval_fields`` also requires the per-object
    fields Detectron2's evaluator reads (pose, truncated, difficult); training does not need them.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise VOCFormatError(f"{path}: annotation file not found") from None
    except ET.ParseError as e:
        raise VOCFormatError(f"{path}: not valid XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise VOCFormatError(f"{path}: no <size>")
    height = _number(size, "height", path, "<size>", int)
    width = _number(size, "width", path, "<size>", int)
    objects = []
    for k, obj in enumerate(root.findall("object")):
        what = f"object {k}"
        name = _text(obj, "name", path, what)
        if name not in class_names:
            raise VOCFormatError(
                f"{path}: {what} has class {name!r}, not one of the {len(class_names)} classes"
            )
        box = obj.find("bndbox")
        if box is None:
            raise VOCFormatError(f"{path}: {what} has no <bndbox>")
        # The evaluator reads coordinates with int(); the training loader with float().
        coord = int if eval_fields else float
        bbox = [
            _number(box, t, path, f"{what} <bndbox>", coord)
            for t in ("xmin", "ymin", "xmax", "ymax")
        ]
        _check_box(bbox, width, height, path, f"{what} ({name})")
        if eval_fields:
            _text(obj, "pose", path, what)
            _number(obj, "truncated", path, what, int)
        # Training keeps difficult boxes and never reads the flag; only the evaluator requires it.
        difficult = 0
        if eval_fields or obj.find("difficult") is not None:
            difficult = _number(obj, "difficult", path, what, int)
        objects.append((name, bbox, difficult))
    return height, width, objects


def _check_box(bbox, width, height, path, what):
    """VOC boxes are 1-based inclusive pixel indices inside <size>; one pixel of slack admits
    the 0-based or one-past-the-end coordinates some annotation tools write."""
    x0, y0, x1, y1 = bbox
    if x1 < x0 or y1 < y0:
        raise VOCFormatError(f"{path}: {what} has an empty box {bbox} (xmax < xmin or ymax < ymin)")
    if x0 < 0 or y0 < 0 or x1 > width + 1 or y1 > height + 1:
        raise VOCFormatError(f"{path}: {what} box {bbox} lies outside the {width}x{height} image")


def _image_ids(dirname, split):
    if not os.path.isdir(dirname):
        raise VOCFormatError(
            f"{dirname}: VOC folder not found (set DETECTRON2_DATASETS or DATASETS.VOC_ROOT to the "
            f"folder holding VOC2007/ and VOC2012/)"
        )
    list_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    if not os.path.isfile(list_file):
        raise VOCFormatError(f"{list_file}: image-set file not found")
    first_line = {}
    with open(list_file) as f:
        for number, line in enumerate(f, 1):
            image_id = line.strip()
            if not image_id:
                continue
            # voc_eval counts a listed image's objects as positives once per listing but keeps
            # one record per id to match them against, so recall and every AP would be capped.
            if image_id in first_line:
                raise VOCFormatError(
                    f"{list_file}: image id {image_id!r} listed twice (lines "
                    f"{first_line[image_id]} and {number})"
                )
            first_line[image_id] = number
    if not first_line:
        raise VOCFormatError(f"{list_file}: lists no images")
    return list(first_line)


def load_voc_split(dirname, split, class_names=CLASS_NAMES):
    """Detectron2 dataset dicts of one VOC split, the same as ``load_voc_instances`` returns."""
    dicts = []
    for image_id in _image_ids(dirname, split):
        anno = os.path.join(dirname, "Annotations", image_id + ".xml")
        jpeg = os.path.join(dirname, "JPEGImages", image_id + ".jpg")
        if not os.path.isfile(jpeg):
            raise VOCFormatError(f"{jpeg}: image listed in {split}.txt not found")
        height, width, objects = read_annotation(anno, class_names)
        # Difficult objects are kept for training, as Detectron2 does. VOC's 1-based pixel
        # indices become 0-based box coordinates on the left/top edge only (Detectron2's rule).
        instances = [
            {
                "category_id": class_names.index(name),
                "bbox": [x0 - 1.0, y0 - 1.0, x1, y1],
                "bbox_mode": BoxMode.XYXY_ABS,
            }
            for name, (x0, y0, x1, y1), _ in objects
        ]
        dicts.append(
            {
                "file_name": jpeg,
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": instances,
            }
        )
    return dicts


def check_image_sizes(dataset_name, dicts):
    """Each image of a loaded VOC split must have its annotation's <size>, upright as training
    reads it (``upright_size``: the header only, about 30 us an image read from the page cache).
    Detectron2's mapper refuses a mismatch only when it reaches the image: after training has
    started, or in the evaluation after it."""
    annotations = os.path.join(MetadataCatalog.get(dataset_name).dirname, "Annotations")
    for record in dicts:
        width, height = upright_size(record["file_name"])
        if (width, height) != (record["width"], record["height"]):
            raise VOCFormatError(
                f"{os.path.join(annotations, record['image_id'] + '.xml')}: <size> is "
                f"{record['width']}x{record['height']} (width x height), but its image "
                f"{record['file_name']} is {width}x{height} (upright, as training reads it): "
                "correct <width> and <height>"
            )


def register_voc(root):
    """(Re-)register Detectron2's voc_* splits to read from ``root`` through the checking loader."""
    for name, folder, split in VOC_SPLITS:
        dirname = os.path.join(root, folder)
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda d=dirname, s=split: load_voc_split(d, s))
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASS_NAMES),
            dirname=dirname,
            year=int(folder[-4:]),
            split=split,
            evaluator_type="pascal_voc",
        )


def read_test_annotations(dataset_name):
    """``(image ids, [objects of each image])`` of a registered VOC split, every annotation read
    with the per-object fields the evaluator requires. voc_eval parses every listed file with bare
    ElementTree calls; reading them first names a bad file instead of failing inside its 20
    classes x 10 thresholds loop."""
    meta = MetadataCatalog.get(dataset_name)
    ids = _image_ids(meta.dirname, meta.split)
    anno_template = os.path.join(meta.dirname, "Annotations", "{}.xml")
    return ids, [
        read_annotation(anno_template.format(i), meta.thing_classes, eval_fields=True)[2]
        for i in ids
    ]


def check_test_split(dataset_name):
    """Load a registered VOC split as training would, check its images' sizes, and read it as the
    evaluator will (before the first iteration, so a bad file stops the run then, not after
    training)."""
    check_image_sizes(dataset_name, DatasetCatalog.get(dataset_name))
    read_test_annotations(dataset_name)


def eval_json_path(cfg, dataset_name):
    """OUTPUT_DIR/voc_eval.json; with several test sets, one file per set."""
    tests = tuple(cfg.DATASETS.TEST)
    name = (
        "voc_eval.json"
        if len(tests) <= 1 or dataset_name == tests[0]
        else f"voc_eval_{dataset_name}.json"
    )
    return os.path.join(cfg.OUTPUT_DIR, name)


class VOCEvaluator(PascalVOCDetectionEvaluator):
    """PascalVOCDetectionEvaluator that also returns per-class AP50 (as ``AP50-<class>``, the
    convention Detectron2's COCO evaluator uses for per-category keys) and, when given
    ``output_file``, writes the summary JSON there (main process only). ``weights`` is
    MODEL.WEIGHTS; ``evaluated`` returns ``(iteration, checkpoint file)`` of the model being
    evaluated (either may be None), asked at evaluation time."""

    def __init__(self, dataset_name, output_file=None, weights="", evaluated=lambda: (None, None)):
        super().__init__(dataset_name)
        self._output_file = output_file
        self._weights = os.path.abspath(weights) if weights and "://" not in weights else weights
        self._evaluated = evaluated

    def evaluate(self):
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        predictions = defaultdict(list)
        for per_rank in all_predictions:
            for cls_id, lines in per_rank.items():
                predictions[cls_id].extend(lines)
        image_ids, objects = read_test_annotations(self._dataset_name)
        num_images = len(image_ids)

        thresholds = range(50, 100, 5)
        aps = np.zeros((len(self._class_names), len(thresholds)))  # percent, class x IoU threshold
        with tempfile.TemporaryDirectory(prefix="pascal_voc_eval_") as tmp:
            det_template = os.path.join(tmp, "{}.txt")
            for c, cls_name in enumerate(self._class_names):
                with open(det_template.format(cls_name), "w") as f:
                    f.write("\n".join(predictions.get(c, [])))
                for t, thresh in enumerate(thresholds):
                    _, _, ap = voc_eval(
                        det_template,
                        self._anno_file_template,
                        self._image_set_path,
                        cls_name,
                        ovthresh=thresh / 100.0,
                        use_07_metric=self._is_2007,
                    )
                    aps[c, t] = ap * 100

        per_iou = aps.mean(axis=0)
        bbox = OrderedDict(AP=float(per_iou.mean()), AP50=float(per_iou[0]), AP75=float(per_iou[5]))
        for c, cls_name in enumerate(self._class_names):
            bbox[f"AP50-{cls_name}"] = float(aps[c, 0])
        results = OrderedDict(bbox=bbox)
        if self._output_file:
            write_detections(
                detections_path(self._output_file),
                self._class_names,
                image_ids,
                objects,
                predictions,
            )
            absent = absent_classes(objects, self._class_names)
            atomic_write_json(self._output_file, self.summary(bbox, num_images, absent))
        return results

    def summary(self, bbox, num_images, absent=()):
        """The voc_eval.json record of one evaluation: the APs, which model they are of (the
        iteration it was trained to and its checkpoint file), and the classes ``absent`` from the
        test set with the AP50 mean over the others."""
        iteration, checkpoint = self._evaluated()
        per_class = {c: bbox[f"AP50-{c}"] for c in self._class_names}
        present = [ap for c, ap in per_class.items() if c not in absent]
        if self._is_2007:
            metric = "PASCAL VOC2007 11-point interpolated AP"
        else:
            metric = "PASCAL VOC2010+ area under the precision envelope"
        return {
            "AP50": bbox["AP50"],
            "AP": bbox["AP"],
            "AP75": bbox["AP75"],
            # voc_eval's 11-point AP of a class without a countable test object is 0 (its recall
            # is 0/0), so AP50 on a test set lacking classes stays below 100 whatever the detector
            # does; the mean over the classes present says how well those were detected.
            "AP50_present_classes": sum(present) / len(present) if present else None,
            "classes_without_test_objects": list(absent),
            "per_class_AP50": per_class,
            "metric": (
                f"{metric}, in percent, computed like Detectron2's PascalVOCDetectionEvaluator "
                f"(difficult objects ignored, a detection matches at IoU > threshold). AP50 is the "
                f"mean over the {len(self._class_names)} classes at IoU 0.5 (the paper's VOC mAP); "
                f"AP75 at 0.75; AP averages thresholds 0.50:0.95 step 0.05. A class with no "
                f"non-difficult test object counts as AP 0 in them (classes_without_test_objects); "
                f"AP50_present_classes is the mean over the other classes."
            ),
            "dataset": self._dataset_name,
            "num_images": num_images,
            "weights": self._weights,
            "iteration": iteration,
            "checkpoint": checkpoint,
        }


def absent_classes(objects, class_names):
    """The classes with no non-difficult object in a test set's ``objects`` (per image, as
    ``read_annotation`` returns them): voc_eval counts difficult objects nowhere."""
    present = {name for image in objects for name, _, difficult in image if not difficult}
    return [c for c in class_names if c not in present]


def detections_path(eval_json):
    """The raw detections beside an evaluation summary: voc_eval[_<set>].json ->
    voc_detections[_<set>].npz."""
    folder, name = os.path.split(eval_json)
    return os.path.join(
        folder, name.replace("voc_eval", "voc_detections", 1)[: -len(".json")] + ".npz"
    )


def write_detections(path, class_names, image_ids, objects, predictions):
    """Save the evaluated detections and the ground truth they were scored against, in the values
    voc_eval reads (VOC 1-based pixel boxes, scores as written with 3 decimals, detections of a
    class in voc_eval's input order), so that the AP can be recomputed on any subset of images
    (``study.statistics``) without the dataset.

    Arrays: image_ids, class_names; det_image (index into image_ids), det_class, det_score,
    det_box (N, 4); gt_image, gt_class, gt_box (M, 4), gt_difficult."""
    index = {image_id: k for k, image_id in enumerate(image_ids)}
    det_image, det_class, det_score, det_box = [], [], [], []
    for c in range(len(class_names)):
        for line in predictions.get(c, []):
            image_id, score, *box = line.split()
            det_image.append(index[image_id])
            det_class.append(c)
            det_score.append(float(score))
            det_box.append([float(v) for v in box])
    gt = [
        (k, class_names.index(name), box, difficult)
        for k, objs in enumerate(objects)
        for name, box, difficult in objs
    ]
    with atomic_open(path, "wb") as f:
        np.savez_compressed(
            f,
            image_ids=np.array(image_ids),
            class_names=np.array(class_names),
            det_image=np.array(det_image, dtype=np.int64),
            det_class=np.array(det_class, dtype=np.int64),
            det_score=np.array(det_score, dtype=np.float64),
            det_box=np.array(det_box, dtype=np.float64).reshape(-1, 4),
            gt_image=np.array([g[0] for g in gt], dtype=np.int64),
            gt_class=np.array([g[1] for g in gt], dtype=np.int64),
            gt_box=np.array([g[2] for g in gt], dtype=np.float64).reshape(-1, 4),
            gt_difficult=np.array([bool(g[3]) for g in gt], dtype=bool),
        )
