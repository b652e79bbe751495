"""VOC07 AP50 recomputed from a detection run's saved detections (``voc_detections.npz``), on
the whole test set or on any weighting of its images (bootstrap resamples), exactly as
Detectron2's ``voc_eval`` computes it on the resampled set (tests compare the two)."""

import numpy as np

THRESHOLDS = np.arange(0.0, 1.1, 0.1)  # VOC2007's 11 recall points, as voc_eval builds them
# Elements of _class_ap's largest array, (resamples, 11, detections of a class) booleans, 16 MB:
# ``ap50`` scores as many resamples at once as keep it (and the (resamples, detections) float
# arrays, 12 MB each) under this size.
_BLOCK_ELEMENTS = 1 << 24


def load_detections(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _match_class(det, c, iou):
    """TP / FP flags of class ``c``'s detections, in voc_eval's order and with its rules:
    detections sorted by descending score (the same np.argsort call), each matched to the
    unmatched ground-truth box of its image with the largest overlap > ``iou``; a match to a
    difficult box counts as neither; boxes in VOC's inclusive pixel convention (+1).
    Returns (image of each detection, tp, fp, non-difficult objects per image)."""
    sel = np.flatnonzero(det["det_class"] == c)
    order = sel[np.argsort(-det["det_score"][sel])]
    gt_sel = det["gt_class"] == c
    gt_by_image = {}
    for k in np.flatnonzero(gt_sel):
        gt_by_image.setdefault(int(det["gt_image"][k]), []).append(k)
    used = set()
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for n, d in enumerate(order):
        bb = det["det_box"][d]
        cand = gt_by_image.get(int(det["det_image"][d]), [])
        ovmax, jmax = -np.inf, None
        if cand:
            g = det["gt_box"][cand]
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]) + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax, jmax = overlaps.max(), cand[int(overlaps.argmax())]
        if ovmax > iou:
            if not det["gt_difficult"][jmax]:
                if jmax in used:
                    fp[n] = 1
                else:
                    tp[n] = 1
                    used.add(jmax)
        else:
            fp[n] = 1
    npos = np.bincount(
        det["gt_image"][gt_sel & ~det["gt_difficult"]], minlength=len(det["image_ids"])
    )
    return det["det_image"][order], tp, fp, npos


def _class_ap(image, tp, fp, npos, weights):
    """VOC07 11-point AP of one class for each row of ``weights`` (rows, images): how often
    each test image counts. Duplicates of a detection share its rank; this gives the AP of the
    expanded set because the points inside a run of duplicates never raise the precision
    envelope."""
    positives = weights @ npos
    if len(tp) == 0:
        return np.zeros(len(weights))  # voc_eval: no detections -> AP 0
    w = weights[:, image]
    ctp = np.cumsum(tp * w, axis=1)
    cfp = np.cumsum(fp * w, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = ctp / positives[:, None]
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    # The precision envelope: the best precision at this recall or above.
    envelope = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    # The first detection reaching each recall point (rec is non-decreasing along a row); the
    # (rows, 11, detections) comparison reduced along its contiguous last axis.
    first = np.count_nonzero(rec[:, None, :] < THRESHOLDS[:, None], axis=2)  # (rows, 11)
    reached = first < len(tp)
    points = np.take_along_axis(envelope, np.minimum(first, len(tp) - 1), axis=1)
    ap = np.where(reached, points, 0.0).mean(axis=1)
    return np.where(positives > 0, ap, 0.0)  # voc_eval: no positives -> recall NaN -> AP 0


class ScoredRun:
    """One detection run's matched detections, from which AP50 on any weighting of the test
    images (a bootstrap resample) is computed without matching again."""

    def __init__(self, image_ids, classes):
        self.image_ids = image_ids
        self.classes = classes  # per class: (image of each detection, tp, fp, npos), by score
        self._boot = {}

    @classmethod
    def from_detections(cls, det, iou=0.5):
        matched = [_match_class(det, c, iou) for c in range(len(det["class_names"]))]
        return cls(det["image_ids"], matched)

    @classmethod
    def from_file(cls, path, iou=0.5):
        return cls.from_detections(load_detections(path), iou)

    def ap50(self, weights=None):
        """Mean over classes of the VOC07 11-point AP, in percent. ``weights``: how often each
        test image counts (None: once each); (images,) gives one number, (rows, images) one per
        row."""
        if weights is None:
            weights = np.ones(len(self.image_ids))
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim == 1:
            return float(self.ap50(weights[None])[0])
        out = np.empty(len(weights))
        longest = max([len(tp) for _, tp, _, _ in self.classes] + [1])
        rows = max(1, _BLOCK_ELEMENTS // (len(THRESHOLDS) * longest))
        for start in range(0, len(weights), rows):
            block = weights[start : start + rows]
            aps = [_class_ap(*matched, block) for matched in self.classes]
            out[start : start + len(block)] = 100.0 * np.mean(aps, axis=0)
        return out

    def bootstrap(self, weights):
        """AP50 on every resample (row) of ``weights``, computed once per weights array."""
        if id(weights) not in self._boot:
            self._boot[id(weights)] = (weights, self.ap50(weights))
        return self._boot[id(weights)][1]
