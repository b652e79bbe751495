"""Checks of a detection run's inputs before its first iteration (needs Detectron2).

Detectron2's checkpointer only logs the weights it could not match and leaves them random, so an
unconverted checkpoint or a backbone of another depth would fine-tune from mostly random weights
and report an AP as if it were a result. A malformed test annotation or an annotated image size
unlike the image's would only surface when the mapper or the evaluation reaches it, hours later,
and training splits without any object in Detectron2's data loader. All are checked here first.

The dataset mapper also reads images as pretraining does (``pretrain.data.images.read_8bit``).
"""

import copy
import os
import re

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, detection_utils
from detectron2.data.detection_utils import SizeMismatchError, convert_PIL_to_numpy
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from detection.convert import DEPTHS
from detection.runs import DETECTION_RUN_FILES
from detection.voc import check_image_sizes, check_test_split
from pretrain.data.images import DECODE_ERRORS, UnreadableImage, open_image, read_8bit
from pretrain.models import ARCHS

# A ResNet tensor of the model: the stem, res2..res4 (backbone) or res5 (backbone, or the ROI
# heads of a C4 model), under any prefix (backbone.bottom_up., roi_heads., ...).
_RESNET_TENSOR = re.compile(r"(^|\.)(stem|res[2-5])\.")


class WeightsError(ValueError):
    """MODEL.WEIGHTS does not initialise the config's backbone; the message names the file."""


def depth_in_file(checkpoint):
    """What ResNet a loaded weight file holds, in words: ``R-152`` (from the converter's
    ``arch`` entry or the block counts), or a description of what it is instead."""
    arch = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    if arch in DEPTHS:
        return f"R-{DEPTHS[arch]}"
    names = list(checkpoint.get("model", {}) if isinstance(checkpoint, dict) else [])
    torchvision_names = any(n.startswith("layer1.") or ".layer1." in n for n in names)
    counts = {}
    for name in names:
        m = re.search(r"(?:layer([1-4])|res([2-5]))\.(\d+)\.", name)
        if m:
            stage = int(m.group(1)) if m.group(1) else int(m.group(2)) - 1
            counts[stage] = max(counts.get(stage, 0), int(m.group(3)) + 1)
    blocks = tuple(counts.get(s, 0) for s in (1, 2, 3, 4))
    bottleneck = any(re.search(r"\.conv3\.", n) for n in names)
    found = next(
        (
            a
            for a, (b, kind) in ARCHS.items()
            if b == blocks and (kind == "bottleneck") == bottleneck
        ),
        None,
    )
    what = (
        f"R-{DEPTHS[found]}" if found else f"no ResNet-18/34/50/101/152 (blocks per stage {blocks})"
    )
    if torchvision_names:
        what += " with torchvision key names (not converted: run tools/convert_to_d2.py)"
    return what


class _RecordingCheckpointer(DetectionCheckpointer):
    """Loads as training does, and keeps what the file held and what did not load (Detectron2
    only logs the latter)."""

    file_contents = {}

    def _load_model(self, checkpoint):
        self.file_contents = dict(checkpoint)  # before "model" is renamed and popped
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def check_output_dir(output_dir, eval_only, resume):
    """A detection run folder belongs to one run: refuse a fresh training run, or an --eval-only
    run, in a folder that already holds a run (either would rewrite its config.yaml and
    voc_eval.json, or mix two runs' checkpoints). Called before Detectron2 writes anything."""
    found = [f for f in DETECTION_RUN_FILES if os.path.exists(os.path.join(output_dir, f))]
    if not found or (resume and not eval_only):
        return
    if eval_only:
        raise ValueError(
            f"OUTPUT_DIR {output_dir} holds a fine-tuning run ({', '.join(found)}); --eval-only "
            "would overwrite its config.yaml and voc_eval.json: give the evaluation its own "
            "OUTPUT_DIR"
        )
    raise ValueError(
        f"OUTPUT_DIR {output_dir} already holds a run ({', '.join(found)}): add --resume to "
        "continue that run, or choose a new OUTPUT_DIR"
    )


def check_backbone_weights(cfg, path):
    """Refuse ``path`` (MODEL.WEIGHTS) unless every ResNet tensor of the config's model is loaded
    from it with the right shape. Builds the model on the CPU and loads the file as training
    does."""
    if not path:
        raise WeightsError(
            "set MODEL.WEIGHTS (a .pkl from tools/convert_to_d2.py, or a trained model_final.pth): "
            "Detectron2 would otherwise start from random weights"
        )
    if "://" not in path and not os.path.isfile(path):
        raise WeightsError(f"MODEL.WEIGHTS {path!r} does not exist")
    cfg = copy.deepcopy(cfg)
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    checkpointer = _RecordingCheckpointer(model)
    try:
        checkpointer.load(path)
        not_loaded = set(checkpointer.incompatible.missing_keys)
        wrong_shapes = {name for name, *_ in checkpointer.incompatible.incorrect_shapes}
    except (RuntimeError, ValueError) as exc:  # name matching can fail outright on a foreign file
        not_loaded, wrong_shapes = {f"(loading failed: {exc})"}, set()
    checkpoint = checkpointer.file_contents
    resnet = [name for name in model.state_dict() if _RESNET_TENSOR.search(name)]
    bad = [name for name in resnet if name in not_loaded or name in wrong_shapes]
    if bad or any(n.startswith("(loading failed") for n in not_loaded):
        raise WeightsError(
            f"MODEL.WEIGHTS {path!r} does not initialise this config's backbone: it holds "
            f"{depth_in_file(checkpoint)}, the config expects R-{cfg.MODEL.RESNETS.DEPTH} "
            f"(MODEL.RESNETS.DEPTH); {len(bad) or 'all'} of {len(resnet)} backbone tensors would "
            f"keep random values ({', '.join(sorted(bad or not_loaded)[:3])} ...)"
        )


def check_datasets(cfg, training=True):
    """Load every split the config names (each image listed must exist, each annotation must
    parse, each VOC image must have its annotation's size), check that a ``training`` run has
    images with objects to train on, and check the test splits as the VOC evaluator will read
    them."""
    train = {name: DatasetCatalog.get(name) for name in cfg.DATASETS.TRAIN}
    for name, dicts in train.items():
        if _is_voc(name):
            check_image_sizes(name, dicts)
    if training:
        check_objects_to_train_on(cfg, train)
    for name in cfg.DATASETS.TEST:
        if _is_voc(name):
            check_test_split(name)
        else:
            DatasetCatalog.get(name)


def _is_voc(name):
    return MetadataCatalog.get(name).get("evaluator_type") == "pascal_voc"


def check_objects_to_train_on(cfg, train):
    """With DATALOADER.FILTER_EMPTY_ANNOTATIONS (the default), Detectron2 drops every training
    image without a non-crowd annotation and asserts in its data loader that some are left
    ("No valid data found"): refuse training splits (``train``: name -> dataset dicts) without
    any object first, naming them."""
    if not cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        return
    images = [record for dicts in train.values() for record in dicts]
    if any(not a.get("iscrowd", 0) for record in images for a in record["annotations"]):
        return
    raise ValueError(
        f"DATASETS.TRAIN ({', '.join(train)}): none of the {len(images)} images has an object "
        "(an <object> in its annotation), and Detectron2 trains only on images with one "
        "(DATALOADER.FILTER_EMPTY_ANNOTATIONS): check DATASETS.VOC_ROOT and the annotations"
    )


def read_image(file_name, format=None):
    """``detection_utils.read_image`` with pretraining's decoding (``read_8bit``): the same EXIF
    orientation, but greyscale of more than 8 bits scaled to 8 bits where Detectron2 clips it at
    255 (a 16-bit PNG would be nearly all white)."""
    with PathManager.open(file_name, "rb") as f:
        return convert_PIL_to_numpy(read_8bit(open_image(f)), format)


class NamedImageMapper(DatasetMapper):
    """Detectron2's DatasetMapper, but images are read by ``read_image`` above, and an image that
    cannot be decoded is named in the error."""

    def __call__(self, dataset_dict):
        # DatasetMapper reads through detection_utils.read_image and has no other way in: the name
        # points to ours for the call. A loader process maps one image at a time (no threads), so
        # nothing else reads images meanwhile.
        detectron2_read_image = detection_utils.read_image
        detection_utils.read_image = read_image
        try:
            return super().__call__(dataset_dict)
        except SizeMismatchError:  # a readable image whose annotated size is wrong: says so itself
            raise
        except DECODE_ERRORS as exc:
            raise UnreadableImage(
                f"cannot read image {dataset_dict['file_name']!r}: {exc}"
            ) from exc
        finally:
            detection_utils.read_image = detectron2_read_image
