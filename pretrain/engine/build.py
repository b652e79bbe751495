"""What training builds from the config besides the data and the method, for the Trainer and
tools/benchmark.py alike: the training module (DDP, torch.compile), the SGD optimizer, the
autocast dtype and the GradScaler, and the cuDNN setting."""

import torch

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def configure_cudnn():
    """cuDNN's autotuner, for training and tools/benchmark.py alike: the first forward and
    backward of each input shape time the candidate convolution algorithms and keep the fastest.
    The choice can differ from run to run (timings vary), so on a GPU two runs with the same
    seed are not bit-identical; they are not anyway (atomic adds in some backward kernels, the
    order of NCCL's sums). CPU runs do not use cuDNN."""
    torch.backends.cudnn.benchmark = True


def amp_dtype(cfg):
    """The autocast dtype of SOLVER.AMP.DTYPE, or None when SOLVER.AMP.ENABLED is off."""
    return AMP_DTYPES[cfg.SOLVER.AMP.DTYPE] if cfg.SOLVER.AMP.ENABLED else None


def build_grad_scaler(cfg, device):
    """A GradScaler under float16 autocast; None otherwise (bfloat16 has float32's range)."""
    return torch.amp.GradScaler(device.type) if amp_dtype(cfg) == torch.float16 else None


def build_optimizer(cfg, module):
    """SGD over ``module``'s parameters (the model and any trainable part of the method)."""
    return torch.optim.SGD(
        module.parameters(),
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


def build_train_module(cfg, module, device, world_size):
    """``module`` as the training step runs it: under DistributedDataParallel with several
    processes, compiled with MODEL.COMPILE."""
    if world_size > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.MODEL.COMPILE:
        # Every training batch has the same shape (see engine.full_batches_per_epoch): one graph
        # with static shapes, compiled once, instead of a recompile for a short last batch and
        # dynamic-shape kernels from then on.
        module = torch.compile(module, dynamic=False)
    return module
