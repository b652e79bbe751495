"""Train/eval presets (in the style of torchvision's references/classification/presets.py)."""

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# INPUT.PRESET: the paper's ImageNet augmentation, or CIFAR's padded crop and flip.
PRESETS = ("imagenet", "cifar")

# AlexNet's PCA of ImageNet RGB pixels (on [0, 1] values), as used by the paper's pipeline.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


class Lighting(torch.nn.Module):
    """AlexNet PCA lighting noise: adds ``eigvec @ (alpha * eigval)`` to every pixel, with
    ``alpha ~ N(0, std)`` drawn per image. Applied to a [0, 1] tensor, before normalisation."""

    def __init__(self, std, eigval=PCA_EIGVAL, eigvec=PCA_EIGVEC):
        super().__init__()
        self.std = std
        self.register_buffer("eigval", torch.tensor(eigval))
        self.register_buffer("eigvec", torch.tensor(eigvec))

    def forward(self, img):
        alpha = torch.randn(3) * self.std
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.view(3, 1, 1)

    def extra_repr(self):
        return f"std={self.std}"


def build_train_transform(cfg):
    # torchvision here, not with the module: see pretrain.models.build_resnet.
    from torchvision import transforms as T

    preset = cfg.INPUT.PRESET
    if preset == "imagenet":
        jitter, lighting = cfg.INPUT.COLOR_JITTER, cfg.INPUT.LIGHTING_STD
        # At strength 0 colour jitter and lighting are identities, yet ColorJitter would still
        # draw its order (torch.randperm(4)) and step through its operations for every image:
        # neither is built then, and device_decode.DeviceAugment leaves out their draws alike.
        steps = [
            T.RandomResizedCrop(cfg.INPUT.CROP_SIZE, scale=(cfg.INPUT.MIN_SCALE, 1.0)),
            T.RandomHorizontalFlip(),
        ]
        if jitter:
            steps.append(T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
        steps += [T.PILToTensor(), T.ConvertImageDtype(torch.float32)]
        if lighting:
            steps.append(Lighting(lighting))
        steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
        return T.Compose(steps)
    # "cifar"
    return T.Compose(
        [
            T.RandomCrop(cfg.INPUT.CROP_SIZE, padding=4),
            T.RandomHorizontalFlip(),
            T.PILToTensor(),
            T.ConvertImageDtype(torch.float32),
            T.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )


def build_eval_transform(cfg):
    from torchvision import transforms as T

    preset = cfg.INPUT.PRESET
    if preset == "imagenet":
        return T.Compose(
            [
                T.Resize(cfg.INPUT.RESIZE_SIZE),
                T.CenterCrop(cfg.INPUT.CROP_SIZE),
                T.PILToTensor(),
                T.ConvertImageDtype(torch.float32),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
    # "cifar"
    return T.Compose(
        [
            T.PILToTensor(),
            T.ConvertImageDtype(torch.float32),
            T.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )
