"""Checkpoint files: written atomically, read with ``weights_only=True`` and memory-mapped, and
on resume the newest readable one is used (a truncated or corrupt file is reported by name and
skipped); under several processes rank 0 picks it and every rank reads that one. A training
checkpoint's contents are ``TrainingCheckpointer``'s."""

import glob
import logging
import os
import pickle
import random
import re

import torch

from pretrain.models import strip_wrapper_prefixes
from pretrain.runtime import distributed as du
from pretrain.runtime import faults
from pretrain.runtime.fileio import atomic_torch_save, atomic_write_text

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
_PERIODIC = re.compile(r"model_(\d+)\.pth$")


def checkpoint_name(iteration):
    return f"model_{iteration:07d}.pth"


def save_checkpoint(output_dir, iteration, state, max_to_keep=0):
    """Write ``model_<iteration>.pth`` then point ``last_checkpoint`` at it (both atomically);
    keep only the ``max_to_keep`` newest periodic checkpoints up to this one when it is > 0.
    Checkpoints of later iterations (unreadable ones a resume skipped) are never pruned in their
    favour: only older checkpoints of the run are deleted."""
    name = checkpoint_name(iteration)
    atomic_torch_save(state, os.path.join(output_dir, name))
    atomic_write_text(os.path.join(output_dir, LAST_CHECKPOINT), name)
    logger.info("saved checkpoint %s", os.path.join(output_dir, name))
    if max_to_keep > 0:
        older = [
            p for p in periodic_checkpoints(output_dir) if checkpoint_iteration(p) <= iteration
        ]
        for old in older[max_to_keep:]:
            os.remove(old)
    return name


def checkpoint_iteration(path):
    return int(_PERIODIC.search(path).group(1))


def periodic_checkpoints(output_dir):
    """Periodic checkpoint paths, newest (highest iteration) first. The folder's name is escaped:
    a run folder named e.g. ``run[12]`` must not match another run's ``run1/`` or ``run2/``."""
    paths = [
        p
        for p in glob.glob(os.path.join(glob.escape(output_dir), "model_*.pth"))
        if _PERIODIC.search(p)
    ]
    return sorted(paths, key=checkpoint_iteration, reverse=True)


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that cannot be loaded: truncated, corrupt, or not weights-only."""


# How a file of torch.save begins: a zip archive (since PyTorch 1.6), or in the older format
# (_use_new_zipfile_serialization=False) a pickle of torch's magic number. Any other pickle
# begins with its PROTO opcode.
_TORCH_FILE_STARTS = (b"PK\x03\x04", pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2))
_PICKLE_START = b"\x80"


def _not_a_torch_file(path):
    """What ``path`` is instead of a file of torch.save, from its first bytes; None when it may
    be one (torch.load then says what is wrong with it). torch.load's own error for these files
    asks to save them again with ``_use_new_zipfile_serialization``, which they never were."""
    with open(path, "rb") as f:
        head = f.read(max(map(len, _TORCH_FILE_STARTS)))
    if not head or head.startswith(_TORCH_FILE_STARTS):
        return None
    if head.startswith(_PICKLE_START):
        return (
            "a pickle, not a PyTorch checkpoint: a Detectron2 weight file (.pkl, as "
            "tools/convert_to_d2.py writes) is already in Detectron2's format, for "
            "tools/train_net.py's MODEL.WEIGHTS"
        )
    return "not a PyTorch checkpoint (torch.save writes a zip archive)"


def load_file(path):
    """Read a checkpoint (or any torch-saved weights) on the CPU, safely and with a clear error.

    The file is memory-mapped: its tensors are read from the page cache as they are used, which
    the processes of a node share, instead of each process copying the whole file (a PS-KD
    checkpoint holds the prediction table: 2.6 GB for ImageNet-1k in bfloat16)."""
    if os.path.isdir(path):  # a run folder, most likely
        final = os.path.join(path, "model_final.pth")
        hint = final if os.path.isfile(final) else "a checkpoint file in it"
        raise IsADirectoryError(f"checkpoint {path!r} is a folder, not a file: give {hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    instead = _not_a_torch_file(path)
    if instead:
        raise UnreadableCheckpoint(
            f"checkpoint {path!r} is {instead}; give a PyTorch checkpoint, e.g. a pretraining "
            "run's OUTPUT_DIR/model_final.pth"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise UnreadableCheckpoint(
            f"checkpoint {path!r} is unreadable (truncated, corrupt, or not a "
            f"weights-only torch file): {type(exc).__name__}: {exc}"
        ) from exc


def load_latest(output_dir):
    """The newest readable checkpoint of a run as (path, state), or (None, None) if none.

    Tries ``last_checkpoint``'s target first, then the other periodic checkpoints newest first;
    every unreadable file is logged by name.
    """
    candidates = []
    tag = os.path.join(output_dir, LAST_CHECKPOINT)
    if os.path.isfile(tag):
        with open(tag) as f:
            candidates.append(os.path.join(output_dir, f.read().strip()))
    candidates += [p for p in periodic_checkpoints(output_dir) if p not in candidates]
    for path in candidates:
        try:
            return path, load_file(path)
        except (UnreadableCheckpoint, FileNotFoundError) as exc:
            logger.warning("cannot resume from %s, trying an older checkpoint: %s", path, exc)
    return None, None


def load_resume_checkpoint(output_dir):
    """Collective. The checkpoint a job resumes from, as (path, state), or (None, None).

    Rank 0 picks it (``load_latest``) and sends its name; every other rank reads that name in its
    own OUTPUT_DIR, never a checkpoint of its own choosing: with node-local output folders, or a
    network file system that shows a stale ``last_checkpoint`` after a restart, ranks would
    otherwise resume from different weights and iterations until a collective hangs. If any rank
    cannot read the file, every rank stops with an error naming the file and the host.
    """
    path, state = load_latest(output_dir) if du.get_rank() == 0 else (None, None)
    name = du.broadcast_object(os.path.basename(path) if path else None)
    if name is None:
        return None, None
    path = os.path.join(output_dir, name)
    state = du.on_every_rank(
        lambda: state if du.get_rank() == 0 else load_file(path),
        f"reading the checkpoint {name} that rank 0 resumes from",
    )
    return path, state


# Keys under which a training checkpoint keeps the network's state dict.
STATE_DICT_KEYS = ("model", "state_dict")


def _is_state_dict(obj):
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    )


def extract_state_dict(obj, name="checkpoint"):
    """The network's flat state dict in a loaded file: a state dict itself, or one wrapped as
    ``{"model": sd, ...}`` / ``{"state_dict": sd}``, with wrapper prefixes stripped. Anything
    else is a ValueError that names ``name`` and says what was found."""
    if not _is_state_dict(obj):
        if not isinstance(obj, dict):
            raise ValueError(f"{name} holds a {type(obj).__name__}, not a state dict")
        inner = [k for k in STATE_DICT_KEYS if _is_state_dict(obj.get(k))]
        if not inner:
            raise ValueError(
                f"{name} holds a dict with keys {sorted(map(str, obj))[:10]}, neither a state "
                f"dict nor one wrapped under {' or '.join(repr(k) for k in STATE_DICT_KEYS)}"
            )
        obj = obj[inner[0]]
    try:
        return strip_wrapper_prefixes(obj)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def load_weights(model, path, model_name="the model (MODEL.ARCH, MODEL.NUM_CLASSES)"):
    """Load our checkpoint / model_final.pth or a torchvision state dict into ``model``;
    ``model_name`` says what the model is in errors."""
    state = extract_state_dict(load_file(path), repr(path))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    # load_state_dict reports shape mismatches without the file's name, so check them first.
    shapes = [
        f"{k}: {list(state[k].shape)} in the file, {list(v.shape)} in the model"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path!r} does not fit {model_name}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}, {len(shapes)} shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(state)


# -- the training state --------------------------------------------------------------------------
def rng_state(device):
    """This process's RNG streams: torch's CPU generator, Python's, and ``device``'s on CUDA."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class TrainingCheckpointer:
    """What a training checkpoint holds, and its restoring: the model, the optimizer, the
    GradScaler, the method's state, where training stands (``trainer``: epoch, steps done in it,
    iteration, iterations per epoch, world size, every rank's RNG streams, the training files'
    fingerprint) and the config."""

    def __init__(self, cfg, model, optimizer, scaler, method, device, data_fingerprint):
        self.cfg, self.model, self.optimizer, self.scaler, self.method = (
            cfg,
            model,
            optimizer,
            scaler,
            method,
        )
        self.device, self.data_fingerprint = device, data_fingerprint

    def save(self, iteration, epoch, steps_done, iters_per_epoch):
        """Collective: rank 0 writes ``model_<iteration>.pth`` (``save_checkpoint``)."""
        method_state = self.method.state_dict()  # collective: rank 0 gets the whole state
        rng = du.all_gather_object(rng_state(self.device))
        if du.get_rank() == 0:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "method": method_state,
                "trainer": {
                    "epoch": epoch,
                    "steps_in_epoch": steps_done,
                    "iteration": iteration,
                    "iters_per_epoch": iters_per_epoch,
                    "world_size": du.get_world_size(),
                    "rng": rng,
                    "data": self.data_fingerprint,
                },
                "config": self.cfg.dump(),
            }
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
            save_checkpoint(self.cfg.OUTPUT_DIR, iteration, state, self.cfg.SOLVER.MAX_TO_KEEP)
        du.barrier()
        faults.reached(f"checkpoint {iteration}", self.cfg.OUTPUT_DIR)

    def load(self, state, iters_per_epoch):
        """Restore a checkpoint's ``state``; returns (iteration, epoch, step) to continue from."""
        trainer = state["trainer"]
        if trainer["iters_per_epoch"] != iters_per_epoch and trainer["steps_in_epoch"] not in (
            0,
            trainer["iters_per_epoch"],
        ):
            raise ValueError(
                f"the checkpoint was taken mid-epoch with {trainer['iters_per_epoch']} iterations "
                f"per epoch, this run has {iters_per_epoch}: resume with the same world size and "
                "batch"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        world = du.get_world_size()
        if trainer["world_size"] == world:
            set_rng_state(trainer["rng"][du.get_rank()], self.device)
        else:
            logger.warning(
                "checkpoint written by %d processes, resuming with %d: RNG streams restart",
                trainer["world_size"],
                world,
            )
        epoch, step = trainer["epoch"], trainer["steps_in_epoch"]
        if step >= trainer["iters_per_epoch"]:
            epoch, step = epoch + 1, 0
        return trainer["iteration"], epoch, step
