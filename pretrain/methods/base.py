"""The interface every training method implements; the engine never branches on method names."""

import functools
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pretrain.data.samplers import ShardedSampler
from pretrain.methods.cutmix import CutMix
from pretrain.models import build_model
from pretrain.runtime.checkpoint import load_weights


@dataclass
class MethodContext:
    """What a method may need to know about the run when it is built."""

    cfg: object
    num_classes: int
    train_labels: list  # label of every training sample, by sample index
    device: object
    per_rank_batch: int  # the loader's batch size: pad size of per-step collectives
    epochs: int


class Method:
    """One training objective.

    Per epoch the engine calls ``on_epoch_start(epoch, model)``; per step
    ``losses, logits = training_step(model, images, labels, indices)`` (inside autocast), then
    backward of ``total_loss(losses)`` and the optimizer step. ``losses`` are the loss's named
    terms, as Detectron2's dict of losses: ``{"loss_ce": ..., "loss_kd": ...}``, each weighted as
    it is added, the same names every step; the engine logs each term's mean and the total's.
    At each log period the engine also logs ``log_statistics()``. ``state_dict`` (a collective
    under DDP: every rank calls it, rank 0 gets the whole state) goes into checkpoints and
    ``load_state_dict`` restores it.
    ``wrap_model`` may return a module holding the model and trainable parts of the method
    (an extra head); that module is what gets optimised and DDP-wrapped, while only the plain
    torchvision model is exported. ``extra_memory`` names the bytes of what else the method
    keeps (a teacher, a frozen copy, PS-KD's prediction table).

    CutMix (AUG.CUTMIX) is available to every method through ``mix_batch``.

    Everything else the project knows about a method is declared here too, and read from the
    registry (``METHODS`` in pretrain/methods/__init__.py): its METHOD.NAME (``name``), the label
    tables and plots show (``label``), its config keys with their defaults (``add_config``), the
    range of each numeric one (``config_ranges``) and the choices of each text one
    (``config_choices``).
    """

    name = ""
    label = ""
    # True for methods taught by a trained model given by TEACHER.WEIGHTS (see ``build_teacher``;
    # a study runs such a method after its teacher's pretraining).
    needs_teacher = False
    teacher = None  # the teacher module of a method that needs one
    # {"KEY.NAME": Range} for every numeric key ``add_config`` declares, and {"KEY.NAME":
    # Choices} for every text one (pretrain/config/checks.py checks them for every tool).
    config_ranges = {}
    config_choices = {}

    @staticmethod
    def add_config(cfg):
        """Declare the method's own config keys with their defaults on ``cfg`` (as Detectron2
        projects' ``add_*_config``); ``pretrain.config.defaults.get_cfg`` calls it for every
        method."""

    @classmethod
    def config_problems(cls, cfg):
        """What is wrong with the method's keys beyond their ranges (a bound set by another
        key), as phrases for ``validate_config``."""
        return []

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx
        self.epoch = 0
        self.cutmix = CutMix.from_config(ctx.cfg)

    def describe(self):
        """One line for the start-of-run log: the method, its options and sources, and CutMix."""
        cutmix = self.cutmix.describe() if self.cutmix else "no CutMix"
        return f"{self.name}: " + "; ".join(self.settings() + [cutmix])

    def settings(self):
        """The method's own hyperparameters and sources, as phrases for ``describe``."""
        return []

    def mix_batch(self, images, labels):
        """The batch's (B, K) float targets, one-hot, and with AUG.CUTMIX the CutMix-ed images
        and area-mixed targets. Returns ``(images, targets, mix)``; ``mix`` (None when nothing
        was mixed) says which samples were mixed with which, for methods that mix more inputs
        the same way or treat mixed samples apart."""
        targets = F.one_hot(labels, self.ctx.num_classes).float()
        mix = (
            self.cutmix.draw(images.shape[0], images.shape[-2], images.shape[-1])
            if self.cutmix
            else None
        )
        if mix is None:
            return images, targets, None
        return mix.images(images), mix.targets(targets), mix

    def wrap_model(self, model):
        return model

    def build_train_sampler(self, num_samples, rank, world_size, seed):
        """The training sampler: yields (index, sample_seed) keys, with set_epoch / set_start."""
        return ShardedSampler(num_samples, rank, world_size, seed=seed)

    def loader_batch_size(self, per_rank_batch):
        """Keys the loader batches per step (a pair sampler yields two per anchor)."""
        return per_rank_batch

    def on_epoch_start(self, epoch, model):
        self.epoch = epoch

    def extra_memory(self):
        """``{what: bytes}`` of the tensors this method keeps on the training device besides the
        module it trains (``wrap_model``'s) and its optimizer state: tools/benchmark.py's
        ``state_mb`` adds them up."""
        return {} if self.teacher is None else {"teacher": module_bytes(self.teacher)}

    def training_step(self, model, images, labels, indices):
        """``(losses, logits)``: the named loss terms (names starting with ``loss_``) and the
        logits of the exported model on the batch."""
        raise NotImplementedError

    def log_statistics(self):
        """``{name: value}`` of what the method measured since its last call, for the log (the
        engine calls it on every rank at each log period: it may be a collective; a step must
        not read the device, so a method accumulates on it, as ``DeviceMeans``)."""
        return {}

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]


def module_bytes(module):
    """Bytes of a module's parameters and buffers."""
    return sum(t.nbytes for t in list(module.parameters()) + list(module.buffers()))


def total_loss(losses):
    """The sum of the loss terms in the dict's order, ``((t1 + t2) + t3) + ...``: floating-point
    addition is not associative, so each method lists its terms in the order that gives exactly
    the expression it trained on before its terms were named."""
    return functools.reduce(operator.add, losses.values())


def soft_cross_entropy(logits, targets):
    """Batch mean of sum_k -targets[k] * log_softmax(logits)[k], computed in float32."""
    return F.cross_entropy(logits.float(), targets)


def build_frozen_model(cfg, device):
    """A model of the training architecture (MODEL.*) for inference only: eval mode, no
    gradients. Its random initialisation runs under a forked RNG, so building it leaves the
    global generator (CutMix draws, checkpointed per rank) untouched."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, device)
    return model.eval().requires_grad_(False)


def build_teacher(cfg, device):
    """The teacher of METHOD.NAME: a frozen model (``build_frozen_model``) holding
    TEACHER.WEIGHTS, our model_final.pth / checkpoint or a torchvision state dict. It is no part
    of a checkpoint: a resumed run reloads it from the same file."""
    if not cfg.TEACHER.WEIGHTS:
        raise ValueError(
            f"METHOD.NAME {cfg.METHOD.NAME} needs TEACHER.WEIGHTS: a trained model of MODEL.ARCH "
            "(our model_final.pth or a torchvision state dict)"
        )
    teacher = build_frozen_model(cfg, device)
    load_weights(teacher, cfg.TEACHER.WEIGHTS)
    return teacher


def describe_teacher(cfg):
    """The teacher's phrase for ``Method.settings``."""
    return f"teacher {cfg.TEACHER.WEIGHTS} ({cfg.MODEL.ARCH}, eval mode, no grad)"


def distillation_kl(logits, target_logits, temperature):
    """``T^2 * sum over the batch and classes of KL(softmax(target / T) || softmax(logits / T))``,
    in float32, with the target side a constant; callers divide by what their reference divides
    by."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    log_q = F.log_softmax(target_logits.detach().float() / temperature, dim=1)
    # Summed here: torch announces that kl_div's "mean" will change meaning to "batchmean".
    return F.kl_div(log_p, log_q, reduction="sum", log_target=True) * temperature**2
