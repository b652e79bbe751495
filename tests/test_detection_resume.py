"""A detection run stopped after a checkpoint and resumed with --resume ends as the uninterrupted
run (detection/stream.py, detection/resume.py, detection/rng.py): the training stream and its
augmentation depend on SEED and the position in the stream only, and every rank's RNG states are
in each checkpoint. On the CPU, with 2 processes (gloo)."""

import datetime
import itertools
import json
import os
import random

import numpy as np
import pytest
import torch

from helpers import ROOT, file_rendezvous, require_detectron2, run_tool

require_detectron2()

from detectron2.data import DatasetCatalog, detection_utils  # noqa: E402
from detectron2.data.samplers import TrainingSampler  # noqa: E402

from detection.checks import NamedImageMapper  # noqa: E402
from detection.config import setup_detection_cfg  # noqa: E402
from detection.stream import SeededSamples, StreamSampler, build_stream_loader, stream_sampler  # noqa: E402
from detection.synthetic_voc import write_voc  # noqa: E402
from detection.voc import register_voc  # noqa: E402

pytestmark = pytest.mark.detectron2

TINY = os.path.join(ROOT, "configs", "detection", "faster_rcnn_R_18_FPN_tiny_cpu.yaml")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    # 12 training images of random aspect (96-128 px a side), 10 test images.
    return write_voc(
        str(tmp_path_factory.mktemp("voc")), trainval07=8, test07=10, trainval12=4, seed=1
    )


def _as_rank(monkeypatch, rank, world):
    from detectron2.data.samplers import distributed_sampler

    monkeypatch.setattr(distributed_sampler.comm, "get_rank", lambda: rank)
    monkeypatch.setattr(distributed_sampler.comm, "get_world_size", lambda: world)


@pytest.mark.parametrize("world", [1, 2])
def test_stream_is_detectron2s_dealt_to_ranks_with_a_seed_per_sample(monkeypatch, world):
    wide = [i % 3 == 0 for i in range(10)]
    seeds = []
    for rank in range(world):
        _as_rank(monkeypatch, rank, world)
        keys = list(itertools.islice(StreamSampler(wide, 2, 7, grouping=False), 40))
        theirs = itertools.islice(TrainingSampler(len(wide), seed=7), 40)
        assert [index for index, _ in keys] == list(theirs)
        seeds += [seed for _, seed in keys]
    assert len(set(seeds)) == len(seeds)  # every (pass, index) its own augmentation


@pytest.mark.parametrize("world", [1, 2])
def test_grouped_stream_resumes_in_place(monkeypatch, world):
    wide = [i % 3 == 0 for i in range(10)]
    for rank in range(world):
        _as_rank(monkeypatch, rank, world)
        full = list(itertools.islice(StreamSampler(wide, 4, 7, grouping=True), 4 * 12))
        batches = [full[i : i + 4] for i in range(0, len(full), 4)]
        assert all(len({wide[index] for index, _ in batch}) == 1 for batch in batches)
        for iteration in (1, 5, 7):
            resumed = StreamSampler(wide, 4, 7, grouping=True)
            resumed.start_at(iteration)
            assert list(itertools.islice(resumed, 4 * (12 - iteration))) == full[4 * iteration :]


def _draws(record):
    """A mapper that records what an augmentation would draw, from every global RNG."""
    return record["file_name"], np.random.rand(), random.random(), torch.rand(1).item()


@pytest.mark.integration
def test_loader_batches_depend_neither_on_workers_nor_on_the_start(voc):
    def batches(workers, start):
        cfg, _ = setup_detection_cfg(TINY, ["DATALOADER.NUM_WORKERS", str(workers)])
        loader = build_stream_loader(cfg, _draws)
        stream_sampler(loader).start_at(start)
        return list(itertools.islice(loader, 6 - start))

    register_voc(voc)
    before = np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state()
    uninterrupted = batches(0, 0)
    # Loading in this process left its RNGs as they were (the training draws from them).
    assert np.array_equal(before[0], np.random.get_state()[1])
    assert before[1] == random.getstate() and torch.equal(before[2], torch.get_rng_state())
    assert len({name for batch in uninterrupted for name, *_ in batch}) > 4
    assert batches(2, 0) == uninterrupted
    assert batches(2, 4) == uninterrupted[4:]


def test_mapping_depends_on_the_key_only(voc):
    cfg, _ = setup_detection_cfg(TINY)
    register_voc(voc)
    # What Detectron2's DatasetMapper draws from np.random: the size, and whether to flip.
    augmentations = detection_utils.build_augmentation(cfg, is_train=True)
    assert [type(a).__name__ for a in augmentations] == ["ResizeShortestEdge", "RandomFlip"]
    samples = SeededSamples(DatasetCatalog.get("voc_2007_trainval"), NamedImageMapper(cfg, True))
    first = samples[0, 123]["image"]
    np.random.rand(5)  # another history of the global RNGs
    random.random()
    assert torch.equal(samples[0, 123]["image"], first)
    images = [samples[0, seed]["image"] for seed in range(8)]
    assert len({(tuple(i.shape), i[:, :, 0].sum().item()) for i in images}) > 2


def _train_net(voc, pkl, out, attempt, *flags, opts=(), env=None, check=True):
    """tools/train_net.py on 2 CPU processes: 8 iterations of the tiny config, a checkpoint every
    3 (model_0000002.pth, model_0000005.pth, model_final.pth), every test detection kept, then
    the KEY VALUE pairs ``opts``. ``attempt`` names the start's own rendezvous folder."""
    rendezvous = out.parent / f"rendezvous-{attempt}"
    rendezvous.mkdir()
    schedule = (
        "SOLVER.MAX_ITER 8 SOLVER.STEPS (6,) SOLVER.WARMUP_ITERS 2 SOLVER.CHECKPOINT_PERIOD 3 "
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0"
    )
    return run_tool(
        ["tools/train_net.py", "--config-file", TINY, "--num-gpus", "2"]
        + ["--dist-url", file_rendezvous(rendezvous), *flags]
        + ["MODEL.WEIGHTS", pkl, "DATASETS.VOC_ROOT", voc, "OUTPUT_DIR", str(out)]
        + schedule.split()
        + list(opts),
        timeout=400,
        env=env,
        check=check,
    )


def _logged_at(line):
    """The time of a Detectron2 log line (``[12/06 01:54:16] ...``), in seconds."""
    return datetime.datetime.strptime(line[1:15], "%m/%d %H:%M:%S").timestamp()


@pytest.mark.slow
def test_a_run_stopped_by_a_stuck_rank_and_resumed_ends_as_the_uninterrupted_one(
    voc, random_r18_pkl, tmp_path
):
    """Rank 1 freezes once model_0000005.pth is written (a frozen node); rank 0 goes on into the
    next iteration's gradient all-reduce and stops after DIST.TIMEOUT_S (Detectron2's launcher
    alone would wait 30 minutes). --resume then ends the run as if it had never stopped."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    # Evaluating at the checkpoints changes nothing either: the evaluation leaves the RNGs alone.
    _train_net(voc, random_r18_pkl, whole, "whole", opts=["TEST.EVAL_PERIOD", "3"])
    stuck = _train_net(
        voc,
        random_r18_pkl,
        resumed,
        "stuck",
        opts=["DIST.TIMEOUT_S", "10"],
        env={"PRETRAIN_FAULT": "hang at checkpoint 5 on rank 1"},
        check=False,
    )
    assert stuck.returncode != 0
    log = (resumed / "log.txt").read_text().splitlines()
    saved = [line for line in log if "Saving checkpoint to" in line][-1]
    stopped = next(line for line in log if "rank 0 of 2 stopped" in line)
    assert saved.endswith("model_0000005.pth") and "DIST.TIMEOUT_S (10 s)" in stopped
    # Rank 0 waited the timeout in one collective, and no longer (an iteration takes a second or
    # two here; the margin is for a loaded machine).
    waited = _logged_at(stopped) - _logged_at(saved)
    assert 9 <= waited <= 40, (saved, stopped)
    print(f"rank 0 stopped {waited:.0f} s after the checkpoint")
    assert (resumed / "last_checkpoint").read_text() == "model_0000005.pth"
    assert not (resumed / "model_final.pth").exists()
    proc = _train_net(voc, random_r18_pkl, resumed, "resumed", "--resume")
    assert "Starting training from iteration 6" in proc.stdout + proc.stderr

    final = [
        torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
        for out in (whole, resumed)
    ]
    assert list(final[0]) == list(final[1])
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    evals = [json.loads((out / "voc_eval.json").read_text()) for out in (whole, resumed)]
    for key in ("AP", "AP50", "AP75", "per_class_AP50", "iteration"):
        assert evals[0][key] == evals[1][key], key
    print(f"AP50 {evals[0]['AP50']} / {evals[1]['AP50']}, AP {evals[0]['AP']} / {evals[1]['AP']}")
    # Every test detection (box and score) the same, not only the AP they add up to.
    detections = [np.load(out / "voc_detections.npz") for out in (whole, resumed)]
    assert detections[0]["det_score"].size > 0
    for key in detections[0].files:
        assert np.array_equal(detections[0][key], detections[1][key]), key
