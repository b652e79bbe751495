"""The random number generators a detection process draws from, as one state: torch's CPU
generator and the device's CUDA one and Python's ``random`` (as pretraining saves them,
``pretrain.runtime.checkpoint.rng_state``), and numpy's global one, which Detectron2's and
fvcore's augmentations draw from (``np.random.uniform``, ``np.random.choice``). The state holds
tensors, numbers and tuples only, so a Detectron2 checkpoint that holds it still loads with
``torch.load(weights_only=True)`` (numpy's own state is an array, which it refuses)."""

import contextlib
import random

import numpy as np
import torch

from pretrain.runtime import checkpoint

CPU = torch.device("cpu")


def rng_state(device=CPU):
    """This process's RNG states (``device``'s CUDA generator too when it is a GPU)."""
    name, key, *rest = np.random.get_state()
    # int64: torch pickles a uint32 tensor for all_gather_object, but cannot unpickle it.
    numpy = (name, torch.from_numpy(key.astype(np.int64)), *rest)
    return {**checkpoint.rng_state(device), "numpy": numpy}


def set_rng_state(state, device=CPU):
    checkpoint.set_rng_state(state, device)
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))


@contextlib.contextmanager
def preserved_rng(device=CPU):
    """Whatever runs inside leaves the RNG states as they were."""
    state = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(state, device)


@contextlib.contextmanager
def seeded_rng(seed):
    """numpy's, Python's and torch's CPU generators seeded with ``seed`` (an integer in
    [0, 2**64)) inside, and as they were after: in a data-loading main process the training's
    own draws stay untouched. torch's CUDA generators are not touched (``torch.manual_seed``
    would reseed them)."""
    with preserved_rng():
        np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # numpy takes 32-bit words
        random.seed(seed)
        torch.random.default_generator.manual_seed(seed)
        yield
