"""A pretraining run's ImageNet metrics on any weighting of its validation images (bootstrap
resamples), from the per-image numbers its evaluation saved beside eval_final.json
(``pretrain.metrics.save_per_image``); the metrics' definitions are pretrain.metrics' own."""

import os

from pretrain.metrics import load_per_image, per_image_path, summarize
from pretrain.runtime.run_folder import FINISHED_MARKER


class ImageNetScores:
    def __init__(self, stats, index, digest):
        self.stats, self.index, self.digest = stats, index, digest
        self._boot = {}

    @classmethod
    def of_run(cls, run_dir):
        """The scores of a pretraining run folder, or None when it kept no per-image file (runs
        evaluated before the file existed)."""
        path = per_image_path(os.path.join(run_dir, FINISHED_MARKER))
        return cls(*load_per_image(path)) if os.path.isfile(path) else None

    @property
    def num_images(self):
        return len(self.index)

    def pairs_with(self, other):
        """Whether ``other`` evaluated the same validation images, in the same order."""
        return self.digest == other.digest and (self.index == other.index).all()

    def value(self, metric):
        return summarize(self.stats)[metric]

    def bootstrap(self, metric, weights):
        """``metric`` on every resample (row) of ``weights``, computed once per weights array
        (and only the metrics asked for: a study of top-1 error alone skips the AURC's work)."""
        _, kept = self._boot.setdefault(id(weights), (weights, {}))
        if metric not in kept:
            out = summarize(self.stats, weights, keys=(metric,))
            kept.update({k: v.numpy() for k, v in out.items()})
        return kept[metric]
