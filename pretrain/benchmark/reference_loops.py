"""Our training loop side by side with the loops it is measured against, on the same JPEG
ImageFolder (tools/benchmark.py --reference-loops; docs/benchmarks.md):

* ``engine`` (CE, colour jitter and lighting off: torchvision's preset has neither) against
  ``torchvision``: the classification reference, references/classification/train.py;
* ``engine:pskd`` (PS-KD, the paper's augmentation) against ``authors:pskd``: the authors' code,
  lgcnsai/PS-KD-Pytorch, main.py.

The reference loops are written here from scratch (no code of theirs is copied or imported:
torchvision's reference scripts are not a package, and the authors' loss builds a CUDA module).
Per step they repeat the operations of the lines named in their docstrings, on torchvision's
ResNet (the model ours trains), with the data loaded in the training process (0 workers), so that
the process's CPU time covers decoding and augmentation on both sides. Left out on their side:
console output (torchvision prints every ``--print-freq`` steps, the authors draw a progress bar
every step) and torchvision's MetricLogger bookkeeping (a few Python additions a step).
"""

import os
import random
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, RandomSampler
from torchvision import transforms as T

from pretrain.benchmark.probes import synchronize
from pretrain.benchmark.training import EngineRun, rotation
from pretrain.cli import setup_cfg
from pretrain.data.build import build_dataset, build_train_loader
from pretrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PCA_EIGVAL, PCA_EIGVEC
from pretrain.models import build_resnet, memory_format

# Each of ours against its reference: (ours, theirs).
PAIRS = (("engine", "torchvision"), ("engine:pskd", "authors:pskd"))


class Loop:
    """Endless batches of ``self.loader``, epoch after epoch; ``run(steps)`` trains that many."""

    def run(self, steps):
        for _ in range(steps):
            batch = next(self.batches, None)
            if batch is None:  # the epoch ended: the next one, reshuffled
                self.epoch += 1
                self.start_epoch(self.epoch)
                self.batches = iter(self.loader)
                batch = next(self.batches)
            self.step(*batch)
            self.images += len(batch[1])

    def start(self):
        self.epoch, self.images = 0, 0
        self.start_epoch(0)
        self.batches = iter(self.loader)

    def start_epoch(self, epoch):
        pass


class EngineLoop(Loop):
    """The Trainer's step (pretrain/engine/trainer.py, ``train_one_epoch``): the batch from its
    dataset, sampler and loader (``build_dataset``, ``build_train_loader``), moved to the device,
    ``train_step``, and the device-side non-finite flag."""

    def __init__(self, cfg, device):
        self.data = build_dataset(cfg, cfg.DATA.TRAIN_SPLIT, train=True)
        self.engine = EngineRun(cfg, device, self.data.targets)
        self.sampler = self.engine.method.build_train_sampler(len(self.data), 0, 1, cfg.SEED)
        batch = self.engine.method.loader_batch_size(self.engine.batch)
        self.loader = build_train_loader(cfg, self.data, self.sampler, batch, device)
        self.device, self.memory_format = device, memory_format(cfg)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.start()

    def start_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def step(self, images, labels, indices, skipped):
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        indices = indices.to(self.device, non_blocking=True)
        loss, _ = self.engine.step(images, labels, indices)
        loss = loss.detach()
        self.nonfinite |= ~torch.isfinite(loss)


def accuracy(output, target, topk=(1, 5)):
    """Top-k accuracies in percent, as both references compute them every step (torchvision's
    references/classification/utils.py ``accuracy``, the authors' main.py ``accuracy``): the
    top max(k) classes, transposed, compared with the labels, counted per k."""
    with torch.no_grad():
        _, pred = output.topk(max(topk), 1, True, True)
        correct = pred.t().eq(target.reshape(1, -1).expand(max(topk), -1))
        return [correct[:k].reshape(-1).float().sum(0) * (100.0 / target.size(0)) for k in topk]


class TorchvisionLoop(Loop):
    """references/classification/train.py at its defaults without AMP: ``load_data``
    (ImageFolder, presets.ClassificationPresetTrain: RandomResizedCrop, RandomHorizontalFlip,
    PILToTensor, ConvertImageDtype, Normalize; a RandomSampler), ``main``'s DataLoader,
    CrossEntropyLoss and SGD (lr 0.1, momentum 0.9, weight decay 1e-4), and per step
    ``train_one_epoch``'s lines: to the device, forward, zero_grad, loss, backward, step,
    ``utils.accuracy`` top-1/5, and ``.item()`` of the loss and both accuracies."""

    def __init__(self, root, crop, batch, device):
        preset = T.Compose(
            [
                T.RandomResizedCrop(crop, interpolation=T.InterpolationMode.BILINEAR),
                T.RandomHorizontalFlip(0.5),
                T.PILToTensor(),
                T.ConvertImageDtype(torch.float),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        data = torchvision.datasets.ImageFolder(os.path.join(root, "train"), preset)
        self.loader = DataLoader(
            data, batch_size=batch, sampler=RandomSampler(data), pin_memory=device.type == "cuda"
        )
        torch.manual_seed(0)
        self.model = build_resnet("resnet18", len(data.classes)).to(device)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4
        )
        self.device = device
        self.start()

    def step(self, image, target):
        image, target = image.to(self.device), target.to(self.device)
        output = self.model(image)
        self.optimizer.zero_grad()
        loss = self.criterion(output, target)
        loss.backward()
        self.optimizer.step()
        acc1, acc5 = accuracy(output, target)
        self.logged = (loss.item(), acc1.item(), acc5.item())  # metric_logger.update's reads


class IndexedImageFolder(torchvision.datasets.ImageFolder):
    """An ImageFolder whose items carry their index (the authors' loader/custom_datasets.py
    ``Custom_ImageFolder``)."""

    def __getitem__(self, index):
        image, target = super().__getitem__(index)
        return image, target, index


def grey(img):
    """The authors' utils/custom_transform.py ``Grayscale``: a copy whose 3 channels are the
    0.299/0.587/0.114 luma, built in place."""
    g = img.clone()
    g[0].mul_(0.299).add_(g[1], alpha=0.587).add_(g[2], alpha=0.114)
    g[1].copy_(g[0])
    g[2].copy_(g[0])
    return g


def authors_jitter(img, strength=0.4):
    """The authors' ``ColorJitter`` on a [0, 1] tensor: brightness (towards black), contrast
    (towards the mean grey) and saturation (towards the grey image), in an order shuffled with
    Python's ``random``, each ``img.lerp(reference, U(-strength, strength))``."""

    def contrast(x):
        g = grey(x)
        return g.fill_(g.mean())

    references = [torch.zeros_like, contrast, grey]
    random.shuffle(references)
    for reference in references:
        img = img.lerp(reference(img), random.uniform(-strength, strength))
    return img


_EIGVAL, _EIGVEC = torch.tensor(PCA_EIGVAL), torch.tensor(PCA_EIGVEC)


def authors_lighting(img, std=0.1):
    """The authors' ``Lighting``: ``alpha ~ N(0, std)`` per image, ``(eigvec * alpha * eigval)``
    summed over its rows, added to every pixel."""
    alpha = img.new_empty(3).normal_(0, std)
    rgb = (_EIGVEC.clone() * alpha.view(1, 3) * _EIGVAL.view(1, 3)).sum(1)
    return img.add(rgb.view(3, 1, 1).expand_as(img))


class AuthorsPSKDLoop(Loop):
    """The authors' PS-KD on ImageNet, one process, an epoch after the first: loader/
    custom_dataloader.py's ImageNet branch (RandomResizedCrop, RandomHorizontalFlip, ToTensor,
    their jitter 0.4 and lighting 0.1, Normalize; shuffled), main.py's SGD (Nesterov, momentum
    0.9, weight decay 1e-4), the float32 table of every sample's softmax on the CPU
    (``all_predictions``), and per step ``train``'s lines for args.PSKD: one-hot rows of
    ``torch.eye(K)`` picked by the labels' numpy copy, soft targets from the table's rows, sent to
    the device, forward, softmax, ``Custom_CrossEntropy_PSKD`` (``(-t * log_softmax).mean(0)
    .sum()``), ``.item()`` of the loss and top-1/5, zero_grad, backward, step, ``torch.max`` and
    the correct count's ``.item()``, and the softmax written back into the table on the CPU."""

    def __init__(self, root, crop, batch, device, alpha):
        transform = T.Compose(
            [
                T.RandomResizedCrop(crop),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                authors_jitter,
                authors_lighting,
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        data = IndexedImageFolder(os.path.join(root, "train"), transform)
        self.classes = len(data.classes)
        # pin_memory as theirs on CUDA; elsewhere there is nothing to pin to.
        pin = device.type == "cuda"
        self.loader = DataLoader(data, batch_size=batch, shuffle=True, pin_memory=pin)
        self.table = torch.zeros(len(data), self.classes, dtype=torch.float32)
        torch.manual_seed(0)
        self.model = build_resnet("resnet18", self.classes).to(device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True
        )
        self.device, self.alpha = device, alpha
        self.start()

    def step(self, inputs, targets, input_indices):
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        one_hot = torch.eye(self.classes)[targets.cpu().detach().numpy()]
        soft = (1 - self.alpha) * one_hot + self.alpha * self.table[input_indices]
        soft = soft.to(self.device)
        outputs = self.model(inputs)
        softmax_output = F.softmax(outputs, dim=1)
        loss = (-soft * F.log_softmax(outputs, dim=1)).mean(0).sum()
        err1, err5 = accuracy(outputs.data, targets)
        self.logged = (loss.item(), err1.item(), err5.item())  # the AverageMeters' reads
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        _, predicted = torch.max(outputs, 1)
        self.correct = predicted.eq(targets).sum().item()
        self.table[input_indices] = softmax_output.cpu().detach()


def build_loops(root, crop, batch, device, opts=()):
    """The four loops of ``PAIRS`` on the ImageFolder under ``root``, ``crop`` px, ``batch`` a
    step; ``opts`` are config overrides for ours."""
    classes = len(os.listdir(os.path.join(root, "train")))

    def engine(*method_opts):
        base = ["DATA.ROOT", root, "MODEL.ARCH", "resnet18", "MODEL.NUM_CLASSES", str(classes)]
        base += ["MODEL.DEVICE", device.type, "SOLVER.IMS_PER_BATCH", str(batch)]
        base += ["INPUT.CROP_SIZE", str(crop), "DATALOADER.NUM_WORKERS", "0"]
        return EngineLoop(setup_cfg(None, base + list(method_opts) + list(opts)), device)

    pskd = engine("METHOD.NAME", "pskd")
    return {
        "engine": engine("INPUT.COLOR_JITTER", "0", "INPUT.LIGHTING_STD", "0"),
        "torchvision": TorchvisionLoop(root, crop, batch, device),
        "engine:pskd": pskd,
        "authors:pskd": AuthorsPSKDLoop(root, crop, batch, device, pskd.engine.method.alpha()),
    }


def benchmark_reference_loops(root, crop, batch, device, iters, warmup, rounds, opts=()):
    """One result dict per loop of ``build_loops``: ``warmup`` untimed steps each, then
    ``rounds`` rounds of ``iters`` steps, in a rotated order each round; img/s and images per
    CPU-second are medians over rounds. Each of ours also gets, against its reference (``PAIRS``),
    the median of the per-round ratios of img/s (``speed_ratio``, > 1: ours is faster) and of
    CPU-seconds per image (``cpu_per_image_ratio``, < 1: ours does less work)."""
    loops = build_loops(root, crop, batch, device, opts)
    for loop in loops.values():
        loop.run(warmup)
    synchronize(device)
    rates = {name: ([], []) for name in loops}  # img/s, img per CPU-s; one entry a round
    for r in range(rounds):
        for name in rotation(list(loops), r):
            loop, images = loops[name], loops[name].images
            t0, c0 = time.perf_counter(), time.process_time()
            loop.run(iters)
            synchronize(device)
            images = loop.images - images
            rates[name][0].append(images / (time.perf_counter() - t0))
            rates[name][1].append(images / (time.process_time() - c0))

    def result(name, reference=None, **ratios):
        """``name``'s medians over the rounds; for one of ours, also its reference and the
        medians of its per-round ratios to it (each ratio's rounds kept beside it)."""
        out = {
            "method": name,
            "img_per_s": statistics.median(rates[name][0]),
            "img_per_s_rounds": rates[name][0],
            "img_per_cpu_s": statistics.median(rates[name][1]),
            "img_per_cpu_s_rounds": rates[name][1],
        }
        if reference:
            out["reference"] = reference
            for key, per_round in ratios.items():
                out[key], out[f"{key}_rounds"] = statistics.median(per_round), per_round
        return out

    results = []
    for ours, theirs in PAIRS:
        (wall, cpu), (ref_wall, ref_cpu) = rates[ours], rates[theirs]
        speed = [a / b for a, b in zip(wall, ref_wall)]
        cpu_per_image = [b / a for a, b in zip(cpu, ref_cpu)]
        results.append(result(ours, theirs, speed_ratio=speed, cpu_per_image_ratio=cpu_per_image))
        results.append(result(theirs))
    return results
