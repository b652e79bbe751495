"""The fast JPEG input path (DATALOADER.DECODE device): decode and augment whole batches on
the training device instead of in the loader workers.

The CPU path (``datasets.IndexedDataset``) decodes, crops, jitters and normalises every image with
PIL in a worker: about 250-400 img/s per core, too slow to feed a GPU on the cores of a node.
Here the workers only read each file's bytes and its header (size, colour mode, EXIF orientation:
no decoding), and draw the sample's augmentation parameters; the training process then decodes
the batch in one call of ``torchvision.io.decode_jpeg(list, device=...)`` (nvjpeg, batched, on
CUDA) and crops, resizes, flips, colour-jitters, adds lighting noise and normalises on the device.

What stays as in the CPU path:

* the parameters are drawn with the same torchvision ``get_params`` calls, in the same order,
  from the generator seeded with the sample's seed (``samplers.sample_seed(SEED, epoch, index)``):
  a sample's crop box, flip, jitter order/factors and lighting noise are the CPU path's, and
  depend only on (SEED, epoch, index), not on workers or batch composition;
* batches keep the sampler's order: ``(images, labels, indices, skipped)`` as ``datasets.collate``.

What differs: pixels are not bit-identical to the PIL pipeline. Resizing uses torchvision's
antialiased bilinear kernel on tensors (PIL uses its own filter support), and colour jitter works
on float pixels where PIL rounds to uint8 after each operation; differences are a few grey levels
(tests/test_device_decode.py bounds them).

Files nvjpeg does not take (not a JPEG, or CMYK/other colour modes) are decoded by PIL in the
worker and travel as pixels, and so are JPEGs whose EXIF orientation asks for a turn or a flip:
``decode_jpeg`` applies that tag only on the CPU (nvjpeg ignores it), and their crop box must be
drawn on the upright size. Files are read as in the CPU path and in detection (``images.read_8bit``:
EXIF orientation applied, 16-bit greyscale reduced to 8 bits). A file whose header reads but
whose data does not decode (e.g. a truncated JPEG) is retried with PIL in the training process;
if PIL fails too the run stops naming the file, whatever DATA.ON_BAD_IMAGE says, because the
batch's labels have already left the loader (use DATALOADER.DECODE cpu to skip such files).
"""

import io

import torch
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from pretrain.data.datasets import IndexedDataset, bad_image, split_bad
from pretrain.data.images import DECODE_ERRORS, UnreadableImage, is_turned, open_image, read_8bit
from pretrain.data.samplers import seeded_rng
from pretrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC

# Colour modes nvjpeg decodes to RGB itself; anything else is converted by PIL in the worker.
_NVJPEG_MODES = ("RGB", "L")


class DeviceAugment:
    """The ImageNet preset (transforms.build_*_transform) split in two: ``draw`` runs in a worker
    and picks one sample's random parameters, ``apply`` runs on the device over a whole batch."""

    def __init__(self, cfg, train):
        self.train = train
        self.crop, self.resize = cfg.INPUT.CROP_SIZE, cfg.INPUT.RESIZE_SIZE
        # The same torchvision objects as the CPU preset: their get_params draw the same numbers.
        self.rrc = T.RandomResizedCrop(self.crop, scale=(cfg.INPUT.MIN_SCALE, 1.0))
        # At strength 0 jitter and lighting are neither drawn nor applied, as in the CPU preset.
        jitter = cfg.INPUT.COLOR_JITTER
        self.jitter = (
            T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter) if jitter else None
        )
        self.lighting_std = cfg.INPUT.LIGHTING_STD
        self._constants = {}

    def draw(self, image):
        """One sample's parameters from torch's global generator (seeded by the caller), drawn in
        the CPU preset's order: crop box, flip, jitter order and factors (INPUT.COLOR_JITTER > 0),
        lighting noise (INPUT.LIGHTING_STD > 0)."""
        top, left, height, width = self.rrc.get_params(image, self.rrc.scale, self.rrc.ratio)
        flip = bool(torch.rand(1) < 0.5)
        params = {"box": torch.tensor([top, left, height, width]), "flip": torch.tensor(flip)}
        if self.jitter is not None:
            j = self.jitter
            order, b, c, s, _ = j.get_params(j.brightness, j.contrast, j.saturation, None)
            params["order"], params["factors"] = order, torch.tensor([b, c, s])
        if self.lighting_std:
            params["alpha"] = torch.randn(3) * self.lighting_std
        return params

    def apply(self, images, params, memory_format):
        """(B, 3, CROP, CROP) float32 normalised batch from a list of uint8 (3, H, W) images."""
        if self.train:
            size = [self.crop, self.crop]
            out = torch.stack(
                [
                    TF.resized_crop(img, *box, size=size, antialias=True)
                    for img, box in zip(images, params["box"].tolist())
                ]
            )
        else:
            out = torch.stack(
                [
                    TF.center_crop(TF.resize(img, [self.resize], antialias=True), [self.crop])
                    for img in images
                ]
            )
        device = out.device
        out = out.float().div_(255)
        if self.train:
            flip = params["flip"].to(device, non_blocking=True).view(-1, 1, 1, 1)
            out = torch.where(flip, out.flip(-1), out)
            if "order" in params:
                out = self._color_jitter(
                    out,
                    params["order"].to(device, non_blocking=True),
                    params["factors"].to(device, non_blocking=True),
                )
            if "alpha" in params:
                eigval, eigvec_t, _, _ = self.constants(device)
                alpha = params["alpha"].to(device, non_blocking=True)
                out = out + ((alpha * eigval) @ eigvec_t).view(-1, 3, 1, 1)
        _, _, mean, std = self.constants(device)
        return ((out - mean) / std).contiguous(memory_format=memory_format)

    def __getstate__(self):
        # Loader workers get a copy of the augment: never device tensors.
        return dict(vars(self), _constants={})

    def constants(self, device):
        """PCA eigenvalues, transposed eigenvectors, mean and std on ``device``, made once: a
        tensor built from a list on a GPU is a blocking copy, a host sync per batch."""
        if device not in self._constants:
            self._constants[device] = (
                torch.tensor(PCA_EIGVAL, device=device),
                torch.tensor(PCA_EIGVEC, device=device).T,
                torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
                torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1),
            )
        return self._constants[device]

    @staticmethod
    def _color_jitter(x, order, factors):
        """ColorJitter (brightness 0, contrast 1, saturation 2; hue unused) with a per-sample order.

        At each of the 4 positions every operation runs on the whole batch, with factor 1 (an
        exact identity: ``1 * x + 0 * y``) for the samples that do not apply it there."""
        for pos in range(order.shape[1]):
            for op in range(3):
                f = torch.where(order[:, pos] == op, factors[:, op], 1.0).view(-1, 1, 1, 1)
                if op == 0:
                    other = torch.zeros_like(x)
                else:
                    other = TF.rgb_to_grayscale(x)
                    if op == 1:
                        other = other.mean(dim=(-3, -2, -1), keepdim=True)
                x = (f * x + (1 - f) * other).clamp_(0, 1)
        return x


class EncodedJpegDataset(IndexedDataset):
    """Like IndexedDataset, but an item is ``(encoded, params, label, index)``: the file's bytes
    (uint8 tensor) or, for files nvjpeg does not take, PIL-decoded (3, H, W) uint8 pixels."""

    def __init__(self, samples, targets, augment, on_bad_image="error"):
        super().__init__(samples, targets, transform=None, on_bad_image=on_bad_image)
        self.augment = augment

    def __getitem__(self, key):
        index, sample_seed = key
        path = self.samples[index]
        try:
            with open(path, "rb") as f:
                data = f.read()
            image = open_image(io.BytesIO(data))  # reads the header only
            if image.format == "JPEG" and image.mode in _NVJPEG_MODES and not is_turned(image):
                encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            else:
                image = read_8bit(image).convert("RGB")  # upright: the crop is drawn on its size
                encoded = TF.pil_to_tensor(image)
        except DECODE_ERRORS as exc:
            return bad_image(self.on_bad_image, path, index, exc)
        with seeded_rng(sample_seed):
            params = self.augment.draw(image) if self.augment.train else {}
        return encoded, params, self.targets[index], index, path

    def collate(self, items):
        """``(EncodedBatch, labels, indices, skipped_paths)`` in the sampler's order."""
        good, skipped = split_bad(items)
        if not good:
            return None, None, None, skipped
        encoded, params, labels, indices, paths = zip(*good)
        params = {k: torch.stack([p[k] for p in params]) for k in params[0]}
        batch = EncodedBatch(list(encoded), params, list(paths), self.augment)
        return (
            batch,
            torch.tensor(labels, dtype=torch.long),
            torch.tensor(indices, dtype=torch.long),
            skipped,
        )


_DECODE_STREAMS = {}


def decode_jpegs(encoded, device):
    """``decode_jpeg(encoded, device=device)`` (RGB), made safe to use on the caller's stream.

    On CUDA, torchvision allocates the outputs while the caller's stream is current, but nvjpeg
    writes them on a stream of its own that does not wait for the caller's. The caching allocator
    hands out a block as soon as it is freed on its stream, since later use on that stream is
    ordered after earlier use; so with the previous step's kernels still queued, nvjpeg could be
    given memory those kernels have yet to read or write, and overwrite it (wrong pixels,
    activations or gradients, silently). Hence the decode runs with a dedicated side stream
    current: its outputs come from that stream's pool, whose blocks were only ever used by earlier
    decodes and by the consumer, which ``record_stream`` covers (a freed block returns to the pool
    only after the consumer's work queued before the free has run). The consumer stream then
    waits for the side stream, which torchvision makes wait for nvjpeg's.
    """
    if device.type != "cuda":
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    consumer = torch.cuda.current_stream(device)
    side = _DECODE_STREAMS.get(device)
    if side is None:
        side = _DECODE_STREAMS[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    consumer.wait_stream(side)
    for image in decoded:
        image.record_stream(consumer)
    return decoded


class EncodedBatch:
    """A batch still encoded. ``to(device, ...)`` (the call the engine makes on the image batch)
    decodes it on ``device`` and returns the augmented, normalised image tensor."""

    def __init__(self, encoded, params, paths, augment):
        self.encoded, self.params, self.paths, self.augment = encoded, params, paths, augment

    def __len__(self):
        return len(self.encoded)

    def pin_memory(self):
        # nvjpeg reads the bitstreams itself; pinning them would cost a copy for no gain.
        return self

    def to(self, device, non_blocking=False, memory_format=torch.contiguous_format):
        return self.augment.apply(self.decode(torch.device(device)), self.params, memory_format)

    def decode(self, device):
        """The batch's uint8 (3, H, W) images on ``device``, in batch order."""
        jpeg = [i for i, e in enumerate(self.encoded) if e.dim() == 1]
        images = [None if e.dim() == 1 else e.to(device, non_blocking=True) for e in self.encoded]
        if (
            not jpeg
        ):  # every file was decoded by PIL in the worker (decode_jpeg refuses an empty list)
            return images
        try:
            decoded = decode_jpegs([self.encoded[i] for i in jpeg], device)
        except RuntimeError:  # one bad file fails the whole batched call: find it
            decoded = [self._decode_one(i, device) for i in jpeg]
        for i, image in zip(jpeg, decoded):
            images[i] = image
        return images

    def _decode_one(self, i, device):
        try:
            return decode_jpegs([self.encoded[i]], device)[0]
        except RuntimeError as nv_exc:
            try:
                image = open_image(io.BytesIO(self.encoded[i].numpy().tobytes()))
                return TF.pil_to_tensor(read_8bit(image).convert("RGB")).to(device)
            except DECODE_ERRORS as exc:
                raise UnreadableImage(
                    f"cannot decode image {self.paths[i]!r}: {nv_exc}; PIL: {exc} "
                    "(DATALOADER.DECODE device cannot skip files that fail only when decoded: use "
                    "DATALOADER.DECODE cpu)"
                ) from exc


def device_decode_dataset(dataset, cfg, train):
    """The EncodedJpegDataset over ``dataset``'s files (an ImageFolder IndexedDataset)."""
    out = EncodedJpegDataset(
        dataset.samples, dataset.targets, DeviceAugment(cfg, train), dataset.on_bad_image
    )
    out.classes = dataset.classes
    return out
