"""Semantic segmentation with the whole network in PyTorch (§3.4), for evaluation and domain adaptation.

The classes whose probability passes the checkpoint's class threshold are present; the decoder turns the
multi-scale attention of each into a foreground probability map, and each pixel takes the present class of
highest probability, or background where that probability is below the checkpoint's foreground threshold (or no
class is present): ``wsvs.runtime.contract.labels_from_foreground``, the rule every backend applies.

Deployment (`wsvs segment`, `wsvs bench`, the Python API) runs in ``wsvs.runtime``, on any backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from wsvs.runtime.contract import labels_from_foreground


def segment_images(model, meta, images: np.ndarray, present: np.ndarray | None = None,
                   device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment same-size images (N, H, W, 3) uint8 RGB with the encoder and decoder of ``model``.

    Returns labels (N, H, W) uint8 (0 background, 1 + class index), class probabilities (N, C) and the
    decoder's foreground probability per class (N, C, H, W), 0 for classes not present. ``present`` (N, C)
    bool, when given, names the present classes instead of thresholding the probabilities (images whose
    labels are known, as in domain adaptation).
    """
    import torch

    from wsvs.runtime.preprocess import normalise

    from .models import multiscale_attention

    x = torch.from_numpy(normalise(images, meta.mean, meta.std)).to(device)
    with torch.inference_mode():
        logits, _ = model.encoder(x)
        scores = torch.sigmoid(logits)
        chosen = scores > meta.class_threshold if present is None else torch.from_numpy(present).to(device)
        if chosen.any():
            foreground = decode_classes(model.decoder, multiscale_attention(model.encoder, x, meta.scales), chosen)
        else:
            foreground = torch.zeros(*chosen.shape, *images.shape[1:3])
        foreground = foreground.cpu().numpy()
    return labels_from_foreground(foreground, meta.foreground_threshold), scores.cpu().numpy(), foreground


def decode_classes(decoder, attention, chosen):
    """The decoder's foreground probability (N, C, H, W) tensor for the chosen (N, C) bool tensor of classes,
    0 for the others, from the multi-scale attention (N, C, H, W) tensor."""
    import torch

    foreground = torch.zeros_like(attention)
    image_index, class_index = torch.nonzero(chosen, as_tuple=True)
    with torch.inference_mode():
        logits = decoder(attention[image_index, class_index][:, None])[:, 0]
    foreground[image_index, class_index] = torch.sigmoid(logits)
    return foreground


def segment_dataset(model, meta, dataset, batch_size: int = 8, use_image_labels: bool = False,
                    device: str = "cpu") -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (index, labels, probs, foreground) for each image of a VOCDataset, batching runs of same-size
    images. ``use_image_labels``: the dataset's image-level labels name the present classes."""
    batch: list[int] = []
    images: list[np.ndarray] = []

    def flush():
        present = np.stack([dataset.labels(i) > 0 for i in batch]) if use_image_labels else None
        results = segment_images(model, meta, np.stack(images), present, device)
        yield from zip(batch, *results)
        batch.clear()
        images.clear()

    for i in range(len(dataset)):
        image = dataset.image(i)
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield from flush()
        batch.append(i)
        images.append(image)
    if images:
        yield from flush()
