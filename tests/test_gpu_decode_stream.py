"""CUDA only (skipped elsewhere): decoding a batch on the device never writes into memory that
kernels still queued on the training stream will read.

The check, in a loop: fill tensors with known values and synchronise; queue a long kernel, then
one min/max reduction per tensor behind it; free the tensors while those reductions are still
queued; decode a batch through ``EncodedBatch.decode`` (the engine's path), which the allocator may
serve from the blocks just freed; synchronise and compare each reduction with its exact value. A
reduction can only come out wrong if the decode wrote into a block before the queued kernels read
it. ``raw_decode_corruptions`` runs the same loop on a bare ``decode_jpeg`` call, to show on a
given GPU that the loop does catch the hazard (it is printed, not asserted: whether the bare call
corrupts depends on the GPU's nvjpeg backend and timing).
"""

import io

import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from pretrain.data.device_decode import EncodedBatch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ITERATIONS, TENSORS = 200, 32
# float32 tensors of the bytes of one decoded 512 x 512 RGB image: the same allocator pool and size.
NUMEL = 3 * 512 * 512 // 4


def _jpegs(count, size=512):
    out = []
    for i in range(count):
        image = Image.effect_mandelbrot((size, size), (-2 + i / count, -1.5, 1, 1.5), 60).convert(
            "RGB"
        )
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    return out


def _corruptions(decode, device):
    """Reductions that came out wrong over ITERATIONS rounds of the loop in the module doc."""
    busy = torch.randn(4096, 4096, device=device)
    wrong = 0
    for it in range(ITERATIONS):
        values = [float(it * TENSORS + t + 1) for t in range(TENSORS)]
        tensors = [torch.full((NUMEL,), v, device=device) for v in values]
        torch.cuda.synchronize(device)
        for _ in range(8):  # a long queue ahead of the reductions
            busy = busy @ busy
            busy /= busy.norm()
        extremes = [torch.stack(t.aminmax()) for t in tensors]
        del tensors  # freed on the current stream while the reductions are still queued
        decoded = decode()
        torch.cuda.synchronize(device)
        wrong += sum(e.tolist() != [v, v] for e, v in zip(extremes, values))
        del decoded
    return wrong


def test_batched_device_decode_does_not_overwrite_memory_still_in_use():
    device = torch.device("cuda", torch.cuda.current_device())
    encoded = _jpegs(16)
    batch = EncodedBatch(encoded, {}, [f"image{i}.jpg" for i in range(16)], augment=None)
    reference = [decode_jpeg(e, mode=ImageReadMode.RGB).to(device) for e in encoded]
    torch.cuda.synchronize(device)
    print("bare decode_jpeg corruptions:", raw_decode_corruptions(device, encoded))
    assert _corruptions(lambda: batch.decode(device), device) == 0
    # ... and the decoded pixels are nvjpeg's decode of the files (close to libjpeg's).
    for got, want in zip(batch.decode(device), reference):
        assert got.shape == want.shape and (got.float() - want.float()).abs().mean() < 2


def raw_decode_corruptions(device, encoded):
    return _corruptions(lambda: decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device), device)
