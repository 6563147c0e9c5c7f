"""VOC/DAVIS classes as sets of ImageNet-1k classes, and the zero-shot CAM of such a class from an ImageNet
classifier (the "zero-shot ImageNet CAM" baseline). ImageNet has no person class, so "person" is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsvs.training.efficientnet_lite import EfficientNetLite0

# class -> ImageNet-1k indices (standard synset order).
IMAGENET_CLASSES: dict[str, tuple[int, ...]] = {
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
    "dog": tuple(range(151, 269)),
    "cat": tuple(range(281, 286)),
    "car": (407, 436, 468, 511, 609, 627, 656, 661, 675, 717, 734, 751, 817),  # VOC car: cars and vans
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


def evaluate_imagenet_cam(data: Path, split: str, class_threshold: float, cam_threshold: float) -> dict:
    """The zero-shot ImageNet CAM baseline on a VOC-layout split (no training at all): a class is present when
    the ImageNet probabilities of its classes sum above ``class_threshold``, and its pixels are labelled as
    eval-cam labels them (``cam_segmentation``). A class ImageNet lacks (person) is never predicted."""
    import torch.nn.functional as F

    from wsvs.runtime.metrics import ConfusionMatrix, iou_table_json

    from .cam import cam_segmentation
    from .efficientnet_lite import pretrained_lite0
    from .voc import VOCDataset

    dataset = VOCDataset(data, split)
    names = dataset.class_names
    model = pretrained_lite0().eval()
    matrix = ConfusionMatrix(len(names) + 1)
    for i in range(len(dataset)):
        image = dataset.image(i)
        x = torch.from_numpy((image.astype(np.float32) - 127.0) / 128.0).permute(2, 0, 1)[None]
        probs, attention = np.zeros(len(names), np.float32), np.zeros((len(names), *image.shape[:2]), np.float32)
        with torch.inference_mode():
            imagenet = model.classify(x).softmax(dim=1)[0]
            for c, name in enumerate(names):
                if name in IMAGENET_CLASSES:
                    probs[c] = float(imagenet[list(IMAGENET_CLASSES[name])].sum())
                    attention[c] = F.interpolate(imagenet_cam(model, x, name)[None], size=image.shape[:2],
                                                 mode="bilinear", align_corners=False)[0, 0].numpy()
        matrix.update(cam_segmentation(probs, attention, class_threshold, cam_threshold), dataset.mask(i))
    return {"split": split, "images": len(dataset), "miou": matrix.miou(),
            "table": iou_table_json({"zero-shot ImageNet CAM": matrix.iou()}, names)}
