"""A small, learnable ImageFolder dataset written as real JPEG files.

Each class has its own colour and stripe orientation/frequency; every image adds a random
offset, brightness and noise, so a ResNet learns it in a few epochs but not in one step.
Used by the tests and the demo: the loading code they exercise is the real one.
"""

import colorsys
import math
import os

import numpy as np
from PIL import Image


def _class_image(rng, cls, num_classes, size):
    hue = cls / num_classes
    base = np.array(colorsys.hsv_to_rgb(hue, 0.55, 0.8)) * 255.0
    angle = math.pi * (cls % 4) / 4.0
    freq = 2.0 + (cls // 4) % 3 * 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * math.pi)
    wave = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
    img = base[None, None, :] * (0.75 + 0.25 * wave[..., None])
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 18.0, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_imagefolder(root, num_classes=4, train_per_class=24, val_per_class=8, size=64, seed=0):
    """Write ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``; return ``root``.
    Raises ValueError naming the count or size (as tools/make_synthetic_data.py's option) when it
    is below 1, before anything is written."""
    for name, n in (
        ("classes", num_classes),
        ("train-per-class", train_per_class),
        ("val-per-class", val_per_class),
        ("size", size),
    ):
        if n < 1:
            raise ValueError(f"--{name} {n}: must be at least 1")
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for cls in range(num_classes):
            folder = os.path.join(root, split, f"class_{cls:03d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                path = os.path.join(folder, f"{split}_{cls:03d}_{i:05d}.jpg")
                _class_image(rng, cls, num_classes, size).save(path, quality=90)
    return root
