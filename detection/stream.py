"""The training stream of a detection run: which images each rank trains on at every iteration,
and how they are augmented, as functions of SEED and the position in the stream alone, so that a
run resumed at iteration k trains on exactly what the uninterrupted run would have.

Detectron2's own loader does not: after ``--resume`` its TrainingSampler restarts the infinite
stream from its beginning, its aspect-ratio grouping takes images in whatever order the loader
workers deliver them, and its augmentations (RandomFlip, ResizeShortestEdge's size) draw from
numpy's global RNG in the workers, which restarts with them. Here:

- ``StreamSampler`` is the rank's share of TrainingSampler's stream (the same global order: one
  seeded permutation of the training images per pass, dealt out rank::world_size), grouped by
  aspect ratio as AspectRatioGroupedDataset groups it, but in the sampler, in the stream's
  order; it yields ``(index, sample_seed)`` keys, and ``start_at(iteration)`` skips the
  iterations already done by counting keys, without loading an image.
- ``SeededSamples`` maps an image under RNGs seeded with its key's seed: ``sample_seed(SEED,
  pass, index)``, as pretraining seeds its augmentation (``pretrain.data.samplers``). Every
  (pass, index) occurs once in the stream, so no two samples share a seed.
- ``build_stream_loader`` is Detectron2's batched loader over these without its own grouping:
  each loader worker takes whole batches in turn and the DataLoader returns them in order, so
  batch j is the sampler's keys j*B .. (j+1)*B - 1 whatever DATALOADER.NUM_WORKERS is.
"""

import itertools

from detectron2.data import DatasetFromList, build_detection_train_loader
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from torch.utils.data import Dataset

from detection.rng import seeded_rng
from pretrain.data.samplers import sample_seed


class StreamSampler(TrainingSampler):
    """This rank's infinite stream of ``(index, sample_seed)`` keys, ``batch_size`` per
    iteration. ``wide``: per training image, whether it is wider than high (the aspect-ratio
    group), used when ``grouping``."""

    def __init__(self, wide, batch_size, seed, grouping):
        super().__init__(len(wide), shuffle=True, seed=seed)
        self._wide, self._batch_size, self._grouping = list(wide), batch_size, grouping
        self._start = 0

    def start_at(self, iteration):
        """Begin the stream at ``iteration``'s first batch (before the loader is iterated)."""
        self._start = iteration * self._batch_size

    def keys(self):
        """The rank's stream from its beginning."""
        mine = itertools.islice(
            enumerate(self._infinite_indices()), self._rank, None, self._world_size
        )
        keys = ((i, sample_seed(self._seed, pos // self._size, i)) for pos, i in mine)
        return self._grouped(keys) if self._grouping else keys

    def _grouped(self, keys):
        """AspectRatioGroupedDataset's batches (wider than high, or not), flattened."""
        buckets = {True: [], False: []}
        for key in keys:
            bucket = buckets[self._wide[key[0]]]
            bucket.append(key)
            if len(bucket) == self._batch_size:
                yield from bucket
                bucket.clear()

    def __iter__(self):
        return itertools.islice(self.keys(), self._start, None)


class SeededSamples(Dataset):
    """Dataset dicts mapped by ``mapper``, addressed by ``(index, sample_seed)`` keys: the
    mapper's random draws (numpy, Python, torch CPU) come from generators seeded with the
    sample's seed, not from the loader worker's history."""

    def __init__(self, dicts, mapper):
        self._dicts = DatasetFromList(dicts, copy=False)  # serialized: workers share its pages
        self._mapper = mapper

    def __len__(self):
        return len(self._dicts)

    def __getitem__(self, key):
        index, seed = key
        with seeded_rng(seed):
            return self._mapper(self._dicts[index])


def build_stream_loader(cfg, mapper):
    """The training loader: batches of this rank's part of SOLVER.IMS_PER_BATCH, from the stream
    of DATASETS.TRAIN (DATALOADER.FILTER_EMPTY_ANNOTATIONS and ASPECT_RATIO_GROUPING as
    Detectron2 applies them), mapped by ``mapper``."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN}: tools/train_net.py "
            "trains with TrainingSampler's stream only (it resumes that stream exactly)"
        )
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    sampler = StreamSampler(
        [d["width"] > d["height"] for d in dicts],
        cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
        cfg.SEED,
        cfg.DATALOADER.ASPECT_RATIO_GROUPING,
    )
    return build_detection_train_loader(
        SeededSamples(dicts, mapper),
        mapper=None,
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,  # the sampler groups
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        # The loader's own generator: creating its iterator (at the first iteration, or the
        # first after a resume) would otherwise draw from torch's global RNG, which the ROI
        # heads' proposal sampling draws from.
        seed=cfg.SEED,
    )


def stream_sampler(loader):
    """The ``StreamSampler`` of a loader ``build_stream_loader`` built (Detectron2 wraps the
    dataset and sampler in a ToIterableDataset)."""
    return loader.dataset.sampler
