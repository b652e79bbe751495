"""Every configuration key of the pretraining stage, with its default and meaning.

YAML files in ``configs/pretrain/`` override these defaults (``_BASE_`` chains them), and
``KEY VALUE`` pairs on the command line override the files, as in Detectron2.
"""
from fvcore.common.config import CfgNode


class CN(CfgNode):
    """fvcore's CfgNode that also takes an integer where the default is a float: YAML and the
    command line write ``0`` for ``0.0``, and yacs would refuse it as a type mismatch."""

    def merge_from_other_cfg(self, cfg_other):
        _ints_to_floats(cfg_other, self)
        return super().merge_from_other_cfg(cfg_other)

    def merge_from_list(self, cfg_list):
        cfg_list = list(cfg_list)
        for i in range(0, len(cfg_list) - 1, 2):
            default = _lookup(self, cfg_list[i])
            value = CfgNode._decode_cfg_value(cfg_list[i + 1])
            if isinstance(default, float) and type(value) is int:
                cfg_list[i + 1] = float(value)
        return super().merge_from_list(cfg_list)


def _lookup(node, dotted):
    for part in dotted.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return None
        node = node[part]
    return node


def _ints_to_floats(other, defaults):
    for key, value in other.items():
        default = defaults.get(key) if isinstance(defaults, CfgNode) else None
        if isinstance(value, CfgNode):
            _ints_to_floats(value, default)
        elif isinstance(default, float) and type(value) is int:
            other[key] = float(value)


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
# With PS-KD: "half" (the paper: half of each shuffled mini-batch PS-KD, half CutMix) or
# "batch" (a whole batch is CutMix-ed with probability PROB). CutMix-ed samples get plain
# CutMix targets and their predictions are never stored. Other methods always use "batch".
_C.AUG.CUTMIX.PSKD_MODE = "half"

# ---------------------------------------------------------------------------------------------
_C.METHOD = CN()
# baseline | ls | pskd | cskd | tfkd | uskd | nkd | lsskd (docs/methods.md)
_C.METHOD.NAME = "baseline"

# Label smoothing: (1 - EPSILON) * onehot + EPSILON / K on every class (torch's convention).
_C.LS = CN()
_C.LS.EPSILON = 0.1

_C.PSKD = CN()
# alpha at the last epoch; alpha_e = ALPHA_T * (e + 1) / EPOCHS.
_C.PSKD.ALPHA_T = 0.8
# Where past predictions come from: "table" (stored softmax of the last training pass, the
# authors' code, the CIFAR set-up) or "previous_model" (a frozen copy of the model at the end of
# the previous epoch run on the current batch: what the paper says it did on ImageNet).
_C.PSKD.SOURCE = "table"
# BatchNorm of the previous_model copy (the paper does not say): "eval" (running statistics, as
# a teacher is used) or "train" (the batch's statistics, as the training forward that fills the
# table; the copy's running statistics are left unchanged).
_C.PSKD.PREVIOUS_MODEL_BN = "eval"
# Storage of the prediction table: "bfloat16" (half the memory; targets off by up to 4e-4 per
# entry for 1000-class rows at alpha 0.3) or "float32" (exact).
_C.PSKD.TABLE_DTYPE = "bfloat16"
# Keep only the top-k probabilities of each row (0 = dense).
_C.PSKD.TOPK = 0

# CS-KD: CE + LAMBDA * TEMPERATURE^2 * KL(partner || anchor), partners of the anchor's class.
# Defaults: the CS-KD paper's CIFAR values (ImageNet values were never published).
_C.CSKD = CN()
_C.CSKD.TEMPERATURE = 4.0
_C.CSKD.LAMBDA = 1.0

# A trained model of MODEL.ARCH that teaches (TF-KD, NKD): our model_final.pth / checkpoint or a
# torchvision state dict.
_C.TEACHER = CN()
_C.TEACHER.WEIGHTS = ""

# TF-KD (self-training): (1 - ALPHA) * CE + ALPHA * TEMPERATURE^2 * KL(teacher || student).
# Defaults: ALPHA and TEMPERATURE of the reference code's ImageNet argparse defaults.
_C.TFKD = CN()
_C.TFKD.ALPHA = 0.1
_C.TFKD.TEMPERATURE = 20.0
# "batchmean": the KL of each sample, averaged over the batch (the TF-KD paper's equation).
# "mean": divided by B*K as the reference CIFAR code's nn.KLDivLoss() does, K times weaker
# (with K = 1000, ALPHA 0.1 and T 20 the KD term is 0.04 x KL).
_C.TFKD.KL_REDUCTION = "batchmean"

# USKD: CE + ALPHA * L_target + BETA * L_non + MU * (weak head's label-smoothed CE).
# Defaults: the USKD paper's ImageNet values.
_C.USKD = CN()
_C.USKD.ALPHA = 1.0
_C.USKD.BETA = 0.1
_C.USKD.MU = 0.005

# LSSKD: CE(y_S) + sum_l CE(branch l, y_S,l) + KD_WEIGHT * deep-to-shallow KL at TEMPERATURE
# + FEAT_WEIGHT * branch-to-backbone feature MSE, on the batch rotated by 0/90/180/270 degrees;
# targets softened with the previous epoch's predictions, alpha_e = ALPHA_T * (e + 1) / EPOCHS.
# The paper gives no values: PS-KD's alpha_T, HSAKD's temperature, unit weights (docs/methods.md).
_C.LSSKD = CN()
_C.LSSKD.ALPHA_T = 0.8
_C.LSSKD.TEMPERATURE = 3.0
_C.LSSKD.KD_WEIGHT = 1.0
_C.LSSKD.FEAT_WEIGHT = 1.0

# NKD: CE + L_target + GAMMA * TEMPERATURE^2 * L_non (non-target probabilities renormalised).
# Defaults: the authors' ImageNet values for ResNet students (yzd-v/cls_KD configs).
_C.NKD = CN()
_C.NKD.TEMPERATURE = 1.0
_C.NKD.GAMMA = 1.5

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
# data and INPUT.PRESET imagenet only. See pretrain/gpu_input.py and docs/benchmarks.md.
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
    """A fresh copy of the defaults."""
    return _C.clone()
