"""DATALOADER.DECODE device (pretrain/data/device_decode.py), on the CPU: batch order, shapes,
per-sample determinism, closeness to the PIL pipeline, and files nvjpeg cannot take."""

import glob
import io
import os
import shutil

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from helpers import ROOT
from pretrain.cli import setup_cfg
from pretrain.data import device_decode
from pretrain.data.build import build_dataset, build_loader
from pretrain.data.images import UnreadableImage
from pretrain.data.samplers import ShardedSampler

CPU_CONFIG = os.path.join(ROOT, "configs/pretrain/cpu_synthetic_R_18.yaml")


def _cfg(root, *opts):
    return setup_cfg(CPU_CONFIG, ["DATA.ROOT", root] + list(opts))


def _first_batch(cfg, train, batch=16, workers=0, epoch=1, seed=3):
    data = build_dataset(cfg, "train" if train else "val", train=train)
    sampler = ShardedSampler(len(data), seed=seed, shuffle=train, pad=train)
    sampler.set_epoch(epoch)
    images, labels, indices, skipped = next(
        iter(build_loader(data, sampler, batch, workers, False))
    )
    if not isinstance(images, torch.Tensor):
        images = images.to("cpu", memory_format=torch.channels_last)
    return images, labels, indices, skipped


# How far (in normalised units: 1 grey level is about 0.017) a sample may be from the PIL path's:
# the mean over its pixels and the largest pixel difference. Training: the same draws, other
# resize kernels and no uint8 rounding between jitter steps (measured: mean <= 0.035, pixel
# <= 0.10). Evaluation: a resize and a centre crop (measured: equal). A wrong decode of a single
# sample (all zero: >= 1.3 from these images; channels swapped, another image) fails.
TRAIN_TOLERANCE = (0.05, 0.2)
EVAL_TOLERANCE = (0.01, 0.05)


def assert_close_to_pil(dev, cpu, tolerance):
    """Every sample of ``dev`` within ``tolerance`` (mean, largest pixel difference) of ``cpu``."""
    diff = (dev - cpu).abs()
    per_sample = diff.mean(dim=(1, 2, 3))
    assert per_sample.max() < tolerance[0], per_sample
    assert diff.amax() < tolerance[1], diff.amax(dim=(1, 2, 3))
    return per_sample


def _same_samples(batch, indices):
    """The images of ``batch`` for the sample ``indices``, in that order."""
    position = {int(i): p for p, i in enumerate(batch[2])}
    return batch[0][[position[int(i)] for i in indices]]


def test_train_batches_match_the_pil_path_in_order_and_closely_in_pixels(synthetic_root):
    cpu = _first_batch(_cfg(synthetic_root), train=True)
    dev = _first_batch(_cfg(synthetic_root, "DATALOADER.DECODE", "device"), train=True)
    assert torch.equal(cpu[1], dev[1]) and torch.equal(cpu[2], dev[2])  # labels, indices, order
    assert dev[0].shape == cpu[0].shape == (16, 3, 56, 56) and dev[0].dtype == torch.float32
    assert dev[0].is_contiguous(memory_format=torch.channels_last)
    # Same crop box, flip, jitter and lighting draws; only kernels and rounding differ.
    diff = assert_close_to_pil(dev[0], cpu[0], TRAIN_TOLERANCE)
    # The same samples in another epoch (other draws) are far apart: the closeness above is not
    # that of any two augmentations of one image.
    other_epoch = _first_batch(_cfg(synthetic_root), train=True, epoch=2, batch=96)
    assert (dev[0] - _same_samples(other_epoch, dev[2])).abs().mean() > 5 * diff.mean()


@pytest.mark.parametrize(
    "jitter, lighting", [("0.4", "0.1"), ("0", "0.1"), ("0.4", "0"), ("0", "0")]
)
def test_draws_take_the_pil_preset_s_numbers_at_every_strength(synthetic_root, jitter, lighting):
    """From one seed, the device path's draws use up torch's generator exactly as the PIL
    preset does (jitter and lighting at strength 0 draw nothing in either), so each sample's
    numbers are the same in both."""
    from pretrain.data.transforms import build_train_transform

    cfg = _cfg(synthetic_root, "INPUT.COLOR_JITTER", jitter, "INPUT.LIGHTING_STD", lighting)
    image = Image.open(glob.glob(os.path.join(synthetic_root, "train", "*", "*.jpg"))[0])
    image = image.convert("RGB")
    after = []
    for augment in (build_train_transform(cfg), device_decode.DeviceAugment(cfg, train=True).draw):
        torch.manual_seed(7)
        augment(image)
        after.append(torch.random.get_rng_state())
    assert torch.equal(*after)


@pytest.mark.integration
def test_augmentation_depends_only_on_seed_epoch_and_index(synthetic_root):
    cfg = _cfg(synthetic_root, "DATALOADER.DECODE", "device")
    a = _first_batch(cfg, train=True, batch=8, workers=0)
    b = _first_batch(cfg, train=True, batch=16, workers=2)  # other workers, other batch
    torch.testing.assert_close(b[0][:8], a[0], rtol=0, atol=0)
    assert torch.equal(a[2], b[2][:8])
    c = _first_batch(cfg, train=True, batch=96, epoch=2)
    other_draws = (_same_samples(c, a[2]) - a[0]).abs().amax(dim=(1, 2, 3))
    assert (other_draws > 0).all()  # each sample drawn anew in another epoch


def test_eval_resize_and_centre_crop_match_pil(synthetic_root):
    opts = ("INPUT.RESIZE_SIZE", "48", "INPUT.CROP_SIZE", "40")  # a real downscale
    cpu = _first_batch(_cfg(synthetic_root, *opts), train=False)
    dev = _first_batch(_cfg(synthetic_root, *opts, "DATALOADER.DECODE", "device"), train=False)
    assert torch.equal(cpu[2], dev[2]) and dev[0].shape == (16, 3, 40, 40)
    assert_close_to_pil(dev[0], cpu[0], EVAL_TOLERANCE)


def test_non_jpeg_and_grayscale_files_are_decoded_by_pil(tmp_path, synthetic_root):
    root = tmp_path / "mixed"
    shutil.copytree(synthetic_root, root)
    folder = root / "train" / "class_000"
    first, second = sorted(folder.iterdir())[:2]
    Image.open(first).save(first, format="PNG")  # a PNG named .jpg, as in ImageNet
    Image.open(second).convert("L").save(second, format="JPEG")
    cpu = _first_batch(_cfg(str(root)), train=True, batch=96)
    dev = _first_batch(_cfg(str(root), "DATALOADER.DECODE", "device"), train=True, batch=96)
    assert torch.equal(cpu[2], dev[2]) and len(dev[2]) == 96  # the two files included
    assert_close_to_pil(dev[0], cpu[0], TRAIN_TOLERANCE)


def _items(dataset, paths):
    """The loader's batch of ``paths`` (what the workers return, collated)."""
    index = {os.fspath(p): i for i, p in enumerate(dataset.samples)}
    return dataset.collate([dataset[(index[os.fspath(p)], 0)] for p in paths])


def _truncated_copy(tmp_path, synthetic_root, keep):
    """A copy of the data whose first class_001 training JPEG keeps only ``keep(size)`` bytes."""
    root = tmp_path / "bad"
    shutil.copytree(synthetic_root, root)
    path = sorted((root / "train" / "class_001").iterdir())[0]
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    return str(root), path


def test_jpeg_cut_in_its_header_is_named_by_the_worker(tmp_path, synthetic_root):
    root, path = _truncated_copy(tmp_path, synthetic_root, lambda size: 200)
    dataset = build_dataset(_cfg(root, "DATALOADER.DECODE", "device"), "train", train=True)
    with pytest.raises(UnreadableImage, match=f"cannot read training image .*{path.name}"):
        _items(dataset, [path])


def test_jpeg_cut_in_its_data_is_named_by_the_device_decode(tmp_path, synthetic_root):
    # The header reads (the worker passes the bytes on); decode_jpeg and then PIL fail on the data.
    root, path = _truncated_copy(tmp_path, synthetic_root, lambda size: size // 2)
    dataset = build_dataset(_cfg(root, "DATALOADER.DECODE", "device"), "train", train=True)
    good = dataset.samples[0]
    batch, labels, indices, skipped = _items(dataset, [good, path])
    assert (
        len(batch) == 2 and not skipped and all(e.dim() == 1 for e in batch.encoded)
    )  # still encoded
    with pytest.raises(UnreadableImage) as info:
        batch.to("cpu")
    message = str(info.value)
    assert message.startswith(f"cannot decode image {str(path)!r}: ") and "truncated" in message
    assert "PIL: " in message and "use DATALOADER.DECODE cpu" in message


def _jpeg_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def test_file_the_device_decoder_refuses_is_decoded_by_pil(monkeypatch, synthetic_root):
    # nvjpeg refuses some files that PIL reads; here decode_jpegs refuses the grayscale one. The
    # batched call fails, each file is retried alone, and the refused one is decoded by PIL.
    paths = sorted(glob.glob(os.path.join(synthetic_root, "train", "*", "*.jpg")))[:4]
    images = [Image.open(p).convert("RGB") for p in paths]
    images[2] = images[2].convert("L")
    encoded = [_jpeg_bytes(image) for image in images]
    calls, decode = [], device_decode.decode_jpegs

    def refusing_decode(batch, device):
        calls.append(len(batch))
        if any(e is encoded[2] for e in batch):
            raise RuntimeError("nvjpeg cannot decode this file")
        return decode(batch, device)

    monkeypatch.setattr(device_decode, "decode_jpegs", refusing_decode)
    decoded = device_decode.EncodedBatch(encoded, {}, paths, augment=None).decode(
        torch.device("cpu")
    )
    assert calls == [4, 1, 1, 1, 1]
    for i, image in enumerate(decoded):
        pixels = Image.open(io.BytesIO(encoded[i].numpy().tobytes())).convert("RGB")
        assert image.shape == (3, 64, 64) and torch.equal(image, pil_to_tensor(pixels)), i


def test_decode_key_is_checked(synthetic_root):
    with pytest.raises(ValueError, match="DATALOADER.DECODE"):
        build_dataset(_cfg(synthetic_root, "DATALOADER.DECODE", "gpu"), "train", train=True)


def test_batch_of_files_all_decoded_by_pil(tmp_path, synthetic_root):
    # Every file of a batch decoded in the workers (PNG, CMYK): no nvjpeg call is left to make.
    root = tmp_path / "pil_only"
    shutil.copytree(synthetic_root, root)
    for i, path in enumerate(sorted((root / "train").glob("*/*.jpg"))):
        image = Image.open(path)
        if i % 2:
            image.save(path, format="PNG")
        else:
            image.convert("CMYK").save(path, format="JPEG")
    cpu = _first_batch(_cfg(str(root)), train=True, batch=8)
    dev = _first_batch(_cfg(str(root), "DATALOADER.DECODE", "device"), train=True, batch=8)
    assert torch.equal(cpu[2], dev[2]) and dev[0].shape == (8, 3, 56, 56)
    assert_close_to_pil(dev[0], cpu[0], TRAIN_TOLERANCE)


def test_exif_turned_jpeg_and_16bit_png_are_read_as_in_the_cpu_path(tmp_path, synthetic_root):
    # nvjpeg ignores the EXIF orientation and PIL's convert("RGB") clips 16 bits at 255: both
    # files are read upright and scaled by PIL in the worker, and the crop drawn on that size.
    root = tmp_path / "turned"
    shutil.copytree(synthetic_root, root)
    turned, deep = sorted((root / "train" / "class_000").iterdir())[:2]
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees clockwise
    Image.open(turned).crop((0, 0, 64, 40)).save(turned, format="JPEG", quality=95, exif=exif)
    stored = pil_to_tensor(Image.open(turned).convert("RGB"))  # 40 high, 64 wide, as stored
    gradient = torch.linspace(0, 65535, 64).to(torch.int32).repeat(48, 1)
    Image.fromarray(gradient.to(torch.uint16).numpy()).save(deep, format="PNG")  # named .jpg
    dataset = build_dataset(_cfg(str(root), "DATALOADER.DECODE", "device"), "train", train=True)
    batch = _items(dataset, [turned, deep])[0]
    upright, scaled = batch.decode(torch.device("cpu"))
    assert torch.equal(upright, stored.rot90(-1, dims=(1, 2)))  # 64 high, 40 wide
    assert torch.equal(scaled, (gradient >> 8).to(torch.uint8).expand(3, 48, 64))
    index = dataset.samples.index(str(turned))
    for seed in range(20):  # crop boxes (top, left, height, width) inside the upright image
        top, left, height, width = dataset[(index, seed)][1]["box"].tolist()
        assert top + height <= 64 and left + width <= 40
    cpu = _first_batch(_cfg(str(root)), train=True, batch=96)
    dev = _first_batch(_cfg(str(root), "DATALOADER.DECODE", "device"), train=True, batch=96)
    assert torch.equal(cpu[2], dev[2]) and len(dev[2]) == 96  # the two files included
    assert_close_to_pil(dev[0], cpu[0], TRAIN_TOLERANCE)
