"""pretrain/benchmark/host_syncs.py: the CPU stand-in for CUDA's sync debug mode flags host
reads of device tensors and data-dependent output sizes, not host-side draws; and no method's
training step (engine.train_step, with and without CutMix) contains any, nor does adding up the
logged values (DeviceMeans)."""

import pytest
import torch
import torch.nn.functional as F

from pretrain.benchmark.host_syncs import HostSyncCheck
from pretrain.config.defaults import get_cfg
from pretrain.engine.step import train_step
from pretrain.methods import METHODS, MethodContext, build_method
from pretrain.models import build_resnet
from pretrain.runtime.device_means import DeviceMeans


def test_check_flags_what_would_synchronise_on_cuda():
    x = torch.randn(4, 5, requires_grad=True)  # made before the check: a device tensor
    with HostSyncCheck() as check:
        x[x > 0].sum().backward()  # boolean mask: nonzero forward and backward
        x.sum().item()
        x.tolist()
        torch.unique(x.detach())
    names = [s.split(" ")[0] for s in check.syncs]
    assert names == ["index", "index_put", "item", "tolist", "_unique2"], check.syncs
    assert "test_host_syncs.py" in check.syncs[0]


def test_check_ignores_host_draws_and_one_hot():
    labels = torch.tensor([0, 2, 1])
    with HostSyncCheck() as check:
        float(torch.rand(()))  # a CutMix-style draw on the host
        keep = torch.ones(4, dtype=torch.bool)
        keep[torch.randperm(4)[:2]] = False
        keep.nonzero()
        F.one_hot(labels, 3)  # reads its labels on the CPU only
        torch.arange(3, device=labels.device).sum()
    assert check.syncs == []
    with HostSyncCheck() as check:
        torch.arange(3, device=labels.device).sum().item()  # made for the device
    assert len(check.syncs) == 1


def test_device_means_add_without_a_sync_and_read_the_means_once():
    means = DeviceMeans(["loss", "loss_ce"], torch.device("cpu"))
    steps = [{"loss": torch.tensor(2.0), "loss_ce": torch.tensor(1.5)}] * 2
    steps.append({"loss": torch.tensor(5.0), "loss_ce": torch.tensor(3.0)})
    with HostSyncCheck() as check:
        means.add(steps[0])
        means.add(steps[1])
        means.add(steps[2], count=2)  # a sum over two samples
    assert check.syncs == []
    assert means.read() == pytest.approx({"loss": 9 / 4, "loss_ce": 6 / 4})
    assert means.read() == {}  # the next window starts empty
    with pytest.raises(ValueError, match="loss_kd"):
        means.add({"loss": torch.tensor(1.0), "loss_kd": torch.tensor(1.0)})


def _step_syncs(name, cutmix, teacher, **opts):
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "METHOD.NAME",
            name,
            "MODEL.ARCH",
            "resnet18",
            "MODEL.NUM_CLASSES",
            "5",
            "MODEL.DEVICE",
            "cpu",
            "AUG.CUTMIX.ENABLED",
            str(cutmix),
            "AUG.CUTMIX.PROB",
            "1.0",
        ]
        + [str(v) for kv in opts.items() for v in kv]
    )
    if METHODS[name].needs_teacher:
        cfg.TEACHER.WEIGHTS = teacher
    labels = [i % 5 for i in range(20)]
    model = build_resnet("resnet18", 5, cfg.MODEL.CIFAR_STEM)
    method = build_method(
        MethodContext(
            cfg=cfg,
            num_classes=5,
            train_labels=labels,
            device=torch.device("cpu"),
            per_rank_batch=4,
            epochs=2,
        )
    )
    module = method.wrap_model(model)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    method.on_epoch_start(1, model)
    keys = method.loader_batch_size(4)
    images, targets, indices = (
        torch.randn(keys, 3, 32, 32),
        torch.tensor(labels[:keys]),
        torch.arange(keys),
    )
    train_step(
        method, module, optimizer, None, images, targets, indices
    )  # creates the optimizer state
    with HostSyncCheck() as check:
        train_step(method, module, optimizer, None, images, targets, indices)
    return check.syncs


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    torch.save({"model": build_resnet("resnet18", 5, False).state_dict()}, path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster on shared cores
    yield path
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cutmix", [False, True], ids=["plain", "cutmix"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_no_training_step_synchronises(name, cutmix, teacher):
    assert _step_syncs(name, cutmix, teacher) == []


@pytest.mark.parametrize(
    "opts", [{"PSKD.TOPK": 2}, {"PSKD.SOURCE": "previous_model"}], ids=["topk", "previous"]
)
def test_no_pskd_variant_synchronises(opts, teacher):
    assert _step_syncs("pskd", True, teacher, **opts) == []
