"""One optimisation step: the engine's, which tools/benchmark.py times too."""

import torch

from pretrain.methods.base import total_loss


def train_step(method, module, optimizer, scaler, images, labels, indices, amp_dtype=None):
    """Forward and loss under autocast unless ``amp_dtype`` is None, backward of the sum of the
    method's loss terms, optimizer step. Returns ``(loss, losses)``: the total and the terms
    (``{name: scalar}``), still on the device."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        losses, _ = method.training_step(module, images, labels, indices)
        loss = total_loss(losses)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss, losses
