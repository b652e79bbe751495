"""Every configuration key of the pretraining stage, with its default and meaning.

The keys every run has are here; the keys of one method (PSKD.*, CSKD.*, ...) are declared by
the method itself (``Method.add_config`` in pretrain/methods/), and ``get_cfg`` collects both.
YAML files in ``configs/pretrain/`` override these defaults (``_BASE_`` chains them), and
``KEY VALUE`` pairs on the command line override the files, as in Detectron2.
"""

from pretrain.config.types import CN
from pretrain.methods import METHODS

_C = CN()

# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# torchvision ResNet name, one of pretrain/models.py ARCHS (resnet18 ... resnet152).
_C.MODEL.ARCH = "resnet152"
_C.MODEL.NUM_CLASSES = 1000
# "cuda" or "cpu". Under torchrun each process uses cuda:LOCAL_RANK.
_C.MODEL.DEVICE = "cuda"
# CIFAR stem (3x3 conv, stride 1, no max-pool) for 32x32 inputs, as the paper's CIFAR ResNets.
_C.MODEL.CIFAR_STEM = False
# Memory format and compiler switches (speed only; results are the same up to float rounding).
_C.MODEL.CHANNELS_LAST = False
_C.MODEL.COMPILE = False
# Weights to evaluate with --eval-only (our checkpoint or a torchvision state dict).
_C.MODEL.WEIGHTS = ""

# ---------------------------------------------------------------------------------------------
_C.DATA = CN()
# "imagefolder": DATA.ROOT holds train/ and val/ ImageFolder trees (the ImageNet layout).
# "cifar100": DATA.ROOT holds torchvision's local copy (cifar-100-python/); never downloaded.
_C.DATA.FORMAT = "imagefolder"
_C.DATA.ROOT = ""
_C.DATA.TRAIN_SPLIT = "train"
_C.DATA.VAL_SPLIT = "val"
# What to do with an image that cannot be decoded: "error" stops the run naming the file,
# "skip" replaces it by another sample of the batch and logs each skipped file.
_C.DATA.ON_BAD_IMAGE = "error"

# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
# "imagenet": random resized crop, flip, colour jitter, PCA lighting (the paper's recipe).
# "cifar": 4-pixel padded random crop and flip.
_C.INPUT.PRESET = "imagenet"
_C.INPUT.CROP_SIZE = 224
# Eval: resize the short side to RESIZE_SIZE, then centre crop CROP_SIZE.
_C.INPUT.RESIZE_SIZE = 256
_C.INPUT.MIN_SCALE = 0.08
_C.INPUT.COLOR_JITTER = 0.4
# AlexNet-style PCA lighting noise std (0 disables).
_C.INPUT.LIGHTING_STD = 0.1

# ---------------------------------------------------------------------------------------------
_C.AUG = CN()
# CutMix, for every method (see docs/methods.md for how each method uses the mixed targets).
_C.AUG.CUTMIX = CN()
_C.AUG.CUTMIX.ENABLED = False
# "batch" rule (every method but PS-KD in "half" mode): probability that a batch is CutMix-ed.
# PS-KD's "half" rule: the fraction of every batch that is CutMix-ed (round(PROB * batch)).
_C.AUG.CUTMIX.PROB = 0.5
# lambda ~ Beta(BETA, BETA); lambda is then recomputed from the box clipped at the border.
_C.AUG.CUTMIX.BETA = 1.0

# ---------------------------------------------------------------------------------------------
_C.METHOD = CN()
# A name of the method registry, pretrain/methods (docs/methods.md). Each method declares its own
# keys (LS.*, PSKD.*, CSKD.*, ...) with their defaults in its module (Method.add_config).
_C.METHOD.NAME = "baseline"

# A trained model of MODEL.ARCH that teaches (TF-KD, NKD): our model_final.pth / checkpoint or a
# torchvision state dict.
_C.TEACHER = CN()
_C.TEACHER.WEIGHTS = ""

# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.EPOCHS = 90
# Global batch size over all processes.
_C.SOLVER.IMS_PER_BATCH = 256
_C.SOLVER.BASE_LR = 0.1
# Epochs at which the learning rate is multiplied by GAMMA.
_C.SOLVER.STEPS = (30, 60)
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 1e-4
# Linear warmup from BASE_LR * WARMUP_FACTOR over WARMUP_EPOCHS (0 disables).
_C.SOLVER.WARMUP_EPOCHS = 0.0
_C.SOLVER.WARMUP_FACTOR = 0.1
# Save a checkpoint every this many iterations (and always at each epoch end).
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Keep only this many newest periodic checkpoints (0 keeps all). Two or more let a resume fall
# back to an older one if the newest is unreadable.
_C.SOLVER.MAX_TO_KEEP = 3
# Mixed precision: AMP_DTYPE "bfloat16" or "float16" (the latter with a gradient scaler).
_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False
_C.SOLVER.AMP.DTYPE = "bfloat16"

# ---------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
# Worker processes per training process.
_C.DATALOADER.NUM_WORKERS = 8
# Where JPEGs are decoded and augmented. "cpu": PIL in the loader workers. "device": workers
# only read file bytes and draw each sample's augmentation parameters (the same as "cpu" for a
# given SEED, epoch and index); the training process decodes the batch with
# torchvision.io.decode_jpeg on MODEL.DEVICE (nvjpeg on CUDA) and augments it there. Pixels are
# close to, not bit-identical with, "cpu" (resize kernels; float colour jitter). ImageFolder
# data and INPUT.PRESET imagenet only. See pretrain/data/device_decode.py and docs/benchmarks.md.
_C.DATALOADER.DECODE = "cpu"

# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
# Evaluate every this many epochs (and always after the last).
_C.TEST.EVAL_PERIOD = 1
# Global evaluation batch size.
_C.TEST.IMS_PER_BATCH = 256

# ---------------------------------------------------------------------------------------------
_C.DIST = CN()
# Seconds a collective may wait before the process group gives up (a dead rank then ends the
# job instead of hanging it).
_C.DIST.TIMEOUT_S = 600

# Log a line every this many iterations.
_C.LOG_PERIOD = 20
_C.SEED = 0
_C.OUTPUT_DIR = "./output"


def get_cfg() -> CN:
    """A fresh copy of the defaults: the general keys above and every method's own keys."""
    cfg = _C.clone()
    for method in METHODS.values():
        method.add_config(cfg)
    return cfg
