"""What a detection run needs, besides Detectron2's own checkpoint (model, optimizer, scheduler,
iteration), to continue after ``--resume`` exactly as if it had never stopped: every rank's RNG
states, saved with each checkpoint and restored on resume (the ROI heads sample proposals, and
the RPN anchors, with torch's RNG), and the training stream continued at the iteration resumed
(``detection.stream``). Also the fault point the resume tests stop a run at."""

import logging

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from detection.rng import rng_state, set_rng_state
from detection.stream import stream_sampler
from pretrain.runtime import faults

logger = logging.getLogger(__name__)


class ResumeState(HookBase):
    """Registered on every rank, before Detectron2's PeriodicCheckpointer (which runs on rank 0
    only, so it cannot gather anything itself). At each iteration that PeriodicCheckpointer
    saves, every rank's RNG states are gathered into this hook's state, which Detectron2 saves
    with the trainer's; on resume each rank restores its own, before the first iteration.

    Fault point (``pretrain.runtime.faults``): ``checkpoint <i>`` on every rank once rank 0 has
    written ``model_<i>.pth``: ``PRETRAIN_FAULT="kill at checkpoint 7"``."""

    def __init__(self, cfg, loader):
        self._period = cfg.SOLVER.CHECKPOINT_PERIOD
        self._device = torch.device(cfg.MODEL.DEVICE)
        self._output_dir = cfg.OUTPUT_DIR
        self._sampler = stream_sampler(loader)
        self._gathered = None  # every rank's states, for the checkpoint of this iteration
        self._resumed = None  # every rank's states, from the checkpoint resumed

    def before_train(self):
        start = self.trainer.start_iter
        self._sampler.start_at(start)
        if start == 0:
            return
        world, rank = comm.get_world_size(), comm.get_rank()
        if self._resumed is None:
            logger.warning("the checkpoint holds no RNG states: RNG streams restart")
        elif len(self._resumed) != world:
            logger.warning(
                "checkpoint written by %d processes, resuming with %d: RNG streams restart",
                len(self._resumed),
                world,
            )
        else:
            set_rng_state(self._resumed[rank], self._device)

    def before_step(self):
        done = self.trainer.iter
        if done > self.trainer.start_iter and done % self._period == 0:
            # Rank 0 has saved model_<done - 1>.pth; the others may be ahead of it.
            comm.synchronize()
            faults.reached(f"checkpoint {done - 1}", self._output_dir)

    def after_step(self):
        # PeriodicCheckpointer's condition: every CHECKPOINT_PERIOD iterations, and the last.
        iteration = self.trainer.iter
        if (iteration + 1) % self._period == 0 or iteration + 1 >= self.trainer.max_iter:
            self._gathered = comm.all_gather(rng_state(self._device))

    def state_dict(self):
        return {} if self._gathered is None else {"rng": self._gathered}

    def load_state_dict(self, state):
        self._resumed = state["rng"]
