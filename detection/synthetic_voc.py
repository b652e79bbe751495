"""A small PASCAL VOC2007 + VOC2012 tree of generated images, in the real on-disk layout.

Each object is a filled rectangle or ellipse whose colour and shape identify its class, on a
noisy background, so a detector can learn the classes in a short run; some objects are
marked ``difficult`` (as VOC does) to exercise the evaluator's "ignore difficult" rule. Image i's
first object is non-difficult and of class i mod 20; a VOC2007 test split of fewer than 20 images
gets up to 3 more non-difficult objects per image, so that every class has a countable instance
in it and no class scores AP 0 for want of test objects (docs/detection.md).
Pure numpy/PIL: no Detectron2 needed to write it.
"""

import colorsys
import os
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

# PASCAL VOC's 20 classes in their fixed order (the order of Detectron2's pascal_voc.CLASS_NAMES).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# Share of an image's extra objects (those of random classes) marked difficult.
DIFFICULT_PROB = 0.25
# At most this many required classes per test image (VOC07 test averages about 3 objects per
# image): a test split of fewer than MIN_TEST07 images cannot show all 20 realistically.
MAX_REQUIRED = 4
MIN_TEST07 = -(-len(VOC_CLASSES) // MAX_REQUIRED)
# Objects' sides are drawn from size // 6 to size // 2 pixels: below this, a box could be empty.
MIN_SIZE = 6


def _class_style(cls):
    # 10 well separated hues x 2 shapes = 20 distinguishable classes.
    hue = (cls % 10) / 10.0
    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95)) * 255.0
    return rgb, ("rect" if cls < 10 else "ellipse")


def _draw(img, box, cls, rng):
    x0, y0, x1, y1 = box
    colour, shape = _class_style(cls)
    h, w = y1 - y0, x1 - x0
    if shape == "rect":
        mask = np.ones((h, w), dtype=bool)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2 <= 1.0
    patch = colour * rng.uniform(0.85, 1.1) + rng.normal(0, 10.0, size=(h, w, 3))
    img[y0:y1, x0:x1][mask] = patch[mask]


def _overlaps(box, boxes):
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0:
            return True
    return False


def _regions(width, height, n):
    """``n`` (1-4) disjoint regions ``(x0, y0, w, h)`` of the image: the whole of it, its two
    halves along the longer side, or its quadrants."""
    if n == 1:
        return [(0, 0, width, height)]
    if n == 2:
        if width >= height:
            return [(0, 0, width // 2, height), (width // 2, 0, width - width // 2, height)]
        return [(0, 0, width, height // 2), (0, height // 2, width, height - height // 2)]
    w, h = width // 2, height // 2
    quadrants = [
        (0, 0, w, h),
        (w, 0, width - w, h),
        (0, h, w, height - h),
        (w, h, width - w, height - h),
    ]
    return quadrants[:n]


def _box_in(rng, region, size):
    """A random box of sides size//6 .. size//2 (at most the region's) inside ``region``."""
    rx, ry, rw, rh = region
    bw = int(rng.integers(size // 6, min(size // 2, rw)))
    bh = int(rng.integers(size // 6, min(size // 2, rh)))
    x0 = rx + int(rng.integers(0, rw - bw))
    y0 = ry + int(rng.integers(0, rh - bh))
    return (x0, y0, x0 + bw, y0 + bh)


def _image(rng, required, size):
    """An image holding one non-difficult object of each class in ``required`` (1 to 4 of them,
    each in its own region, so they never overlap) and 0-2 objects of random classes where they
    find room, a quarter of those difficult."""
    width = int(rng.integers(size * 3 // 4, size + 1))
    height = int(rng.integers(size * 3 // 4, size + 1))
    grey = rng.uniform(60, 140)
    img = np.full((height, width, 3), grey) + rng.normal(0, 12.0, size=(height, width, 3))
    extra = list(rng.integers(0, len(VOC_CLASSES), size=int(rng.integers(0, 3))))
    objects = []
    for cls, region in zip(required, _regions(width, height, len(required))):
        box = _box_in(rng, region, size)
        _draw(img, box, cls, rng)
        objects.append((cls, box, 0))
    for cls in extra:
        for _ in range(20):  # rejection sampling for a free spot; give up on crowded images
            box = _box_in(rng, (0, 0, width, height), size)
            if not _overlaps(box, [o[1] for o in objects]):
                break
        else:
            continue
        _draw(img, box, int(cls), rng)
        objects.append((int(cls), box, int(rng.random() < DIFFICULT_PROB)))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), objects


def _annotation_xml(folder, filename, width, height, objects):
    parts = [
        "<annotation>",
        f"  <folder>{folder}</folder>",
        f"  <filename>{escape(filename)}</filename>",
        "  <source><database>PS-KD synthetic VOC</database></source>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for cls, (x0, y0, x1, y1), difficult in objects:
        # VOC boxes are 1-based inclusive pixel indices: pixels x0..x1-1 (0-based) are x0+1..x1.
        parts += [
            "  <object>",
            f"    <name>{VOC_CLASSES[cls]}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{difficult}</difficult>",
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>\n")
    return "\n".join(parts)


def _required_classes(i, n, every_class):
    """The classes image ``i`` of an ``n``-image split must show: class i mod 20 and, when
    ``every_class`` and ``n`` < 20, the classes i + n, i + 2n, ... below 20 as well, so that the
    split's images show all 20 between them."""
    if not every_class:
        return [i % len(VOC_CLASSES)]
    return [i % len(VOC_CLASSES)] + list(range(i + n, len(VOC_CLASSES), n))


def _write_split(rng, root, year, split, ids, size, every_class=False):
    base = os.path.join(root, f"VOC{year}")
    for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    for i, image_id in enumerate(ids):
        img, objects = _image(rng, _required_classes(i, len(ids), every_class), size)
        img.save(os.path.join(base, "JPEGImages", image_id + ".jpg"), quality=92)
        xml = _annotation_xml(f"VOC{year}", image_id + ".jpg", img.width, img.height, objects)
        with open(os.path.join(base, "Annotations", image_id + ".xml"), "w") as f:
            f.write(xml)
    with open(os.path.join(base, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("".join(i + "\n" for i in ids))


def write_voc(root, trainval07=40, test07=20, trainval12=40, size=128, seed=0):
    """Write ``root/VOC2007`` (trainval, test) and ``root/VOC2012`` (trainval); return ``root``.

    Image ids follow VOC's patterns (``000001`` in 2007, ``2012_000001`` in 2012); 2007 trainval
    and test ids are disjoint. ``size`` is the largest image side. The test split shows every
    class (``MIN_TEST07`` images or more); the trainval splits, class i mod 20 in image i.
    Raises ValueError naming the split or size (as the tool's option) when it is out of range,
    before anything is written.
    """
    for name, n in (("trainval07", trainval07), ("trainval12", trainval12)):
        if n < 1:
            raise ValueError(f"--{name} {n}: every split needs at least one image")
    if size < MIN_SIZE:
        raise ValueError(
            f"--size {size}: must be at least {MIN_SIZE} (an object's sides are 1/6 to 1/2 of it)"
        )
    if test07 < MIN_TEST07:
        raise ValueError(
            f"--test07 {test07}: the test split needs at least {MIN_TEST07} images to show all "
            f"{len(VOC_CLASSES)} classes (at most {MAX_REQUIRED} of them per image)"
        )
    rng = np.random.default_rng(seed)
    ids07 = [f"{i:06d}" for i in range(1, trainval07 + test07 + 1)]
    _write_split(rng, root, 2007, "trainval", ids07[:trainval07], size)
    _write_split(rng, root, 2007, "test", ids07[trainval07:], size, every_class=True)
    _write_split(
        rng, root, 2012, "trainval", [f"2012_{i:06d}" for i in range(1, trainval12 + 1)], size
    )
    return root
