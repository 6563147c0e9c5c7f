"""VOC/DAVIS classes as sets of ImageNet-1k classes, and the zero-shot CAM of such a class from an ImageNet
classifier (the "zero-shot ImageNet CAM" baseline). ImageNet has no person class, so "person" is absent.
"""

from __future__ import annotations

import torch

from wsvs.training.efficientnet_lite import EfficientNetLite0

# class -> ImageNet-1k indices (standard synset order).
IMAGENET_CLASSES: dict[str, tuple[int, ...]] = {
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
    "dog": tuple(range(151, 269)),
    "cat": tuple(range(281, 286)),
    "car": (436, 468, 511, 609, 627, 656, 717, 751, 817),
    "horse": (339, 603),
    "cow": (345, 346, 347),
    "sheep": (348, 349),
    "boat": (472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914),
    "bus": (654, 779, 874),
    "train": (466, 547, 565, 705, 820),
    "motorbike": (665, 670),
    "bicycle": (444, 671),
    "aeroplane": (404, 895),
}


def imagenet_cam(encoder: EfficientNetLite0, images: torch.Tensor, class_name: str) -> torch.Tensor:
    """Attention (N, h, w) in [0, 1] for ``class_name``: the max over its ImageNet classes of their CAMs
    (head features weighted by each class's ``_fc`` row), each image scaled to a maximum of 1."""
    weights = encoder._fc.weight[list(IMAGENET_CLASSES[class_name])]
    cams = torch.einsum("nchw,kc->nkhw", encoder(images), weights).amax(dim=1).clamp(min=0)
    return cams / cams.flatten(1).amax(dim=1).clamp(min=1e-6)[:, None, None]
