"""How fast each input path (DATALOADER.DECODE) delivers training batches to the device, on
JPEG files (tools/benchmark.py --input-pipeline; docs/benchmarks.md)."""

import os
import statistics
import time

from pretrain.benchmark.probes import synchronize
from pretrain.cli import setup_cfg
from pretrain.models import memory_format


def jpeg_folder(root, gen_images, gen_size):
    """The number of classes of the ImageFolder under ``root``, after generating ``gen_images``
    JPEGs of ``gen_size`` px in 8 classes there (``synthetic.write_imagefolder``) when it has no
    train/."""
    from pretrain.data.synthetic import write_imagefolder

    if not os.path.isdir(os.path.join(root, "train")):
        classes = 8
        write_imagefolder(root, classes, -(-gen_images // classes), 1, gen_size, seed=0)
    return len(os.listdir(os.path.join(root, "train")))


def benchmark_input(
    root, decodes, device, batch_size, workers, iters, rounds, opts=(), gen_images=512, gen_size=256
):
    """img/s of each DATALOADER.DECODE of ``decodes`` on the JPEGs under ``root`` (``gen_images``
    of ``gen_size`` px generated there when it has no train/), each batch carried to ``device``
    ready for the model; ``opts`` are config overrides (INPUT.CROP_SIZE, MODEL.CHANNELS_LAST,
    ...)."""
    from pretrain.data.build import build_dataset, build_loader
    from pretrain.data.samplers import ShardedSampler

    num_classes = jpeg_folder(root, gen_images, gen_size)
    results = []
    for decode in decodes:
        cfg = setup_cfg(
            None,
            ["DATA.ROOT", root, "MODEL.NUM_CLASSES", str(num_classes), "DATALOADER.DECODE", decode]
            + list(opts),
        )
        data = build_dataset(cfg, cfg.DATA.TRAIN_SPLIT, train=True)
        sampler = ShardedSampler(len(data), seed=0)
        loader = build_loader(data, sampler, batch_size, workers, device.type == "cuda")
        rates, epoch, images = [], 0, 0
        batches = iter(())
        t0 = None
        while len(rates) < rounds:
            batch = next(batches, None)
            if batch is None:
                sampler.set_epoch(epoch)
                epoch, batches = epoch + 1, iter(loader)
                continue
            x = batch[0].to(device, non_blocking=True, memory_format=memory_format(cfg))
            synchronize(device)
            if t0 is None:  # the first batch waits for the workers to start
                t0, images = time.perf_counter(), 0
                continue
            images += x.shape[0]
            if images >= iters * batch_size:
                rates.append(images / (time.perf_counter() - t0))
                t0, images = time.perf_counter(), 0
        results.append(
            {
                "method": f"input:{decode}",
                "decode": decode,
                "img_per_s": statistics.median(rates),
                "img_per_s_rounds": rates,
                "workers": workers,
                "images_in_set": len(data),
            }
        )
    return results
