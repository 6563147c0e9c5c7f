"""The three inference graphs of the unchanged model, in static-shape ops: what ``wsvs export`` traces to ONNX and
`wsvs bench` runs as its PyTorch eager baseline (so they live here, and the exporter imports them).

All take normalised images, (N, 3, H, W) float32 RGB scaled to [0, 1] then standardised with the
checkpoint's mean and std (``wsvs.runtime.preprocess.normalise``), so the same pre-processing serves
every backend and the int8 calibration sees the tensors the network sees.

- ``SegmenterGraph``: images -> scores, classes, probs, labels: inference of §3.4 end to end.
- ``EncoderGraph``: images -> scores, features, cams, attention, for the video runtime.
- ``DecoderGraph``: attention -> foreground probability, for the video runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsvs.runtime.contract import ModelMetadata

from .models import Decoder, Encoder, WSVSModel, normalise_cams

# Output names, in graph order, shared by the exporter, the verifier and the runtime.
SEGMENTER_OUTPUTS = ("scores", "classes", "probs", "labels")
ENCODER_OUTPUTS = ("scores", "features", "cams", "attention")
DECODER_OUTPUTS = ("foreground",)
OUTPUT_NAMES = {"segmenter": SEGMENTER_OUTPUTS, "encoder": ENCODER_OUTPUTS, "decoder": DECODER_OUTPUTS}


def attention_over_scales(encoder: Encoder, images: torch.Tensor, cams: torch.Tensor, scales: Sequence[float],
                          pick: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``multiscale_attention`` of the maps that ``pick`` selects from each scale's CAMs, reusing ``cams``
    (the CAMs of ``images`` at scale 1) instead of running the encoder on the same input again."""
    size = images.shape[-2:]
    attention = None
    for scale in scales:
        if scale != 1:
            _, cams_at_scale = encoder(F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                     align_corners=False))
        else:
            cams_at_scale = cams
        maps = F.interpolate(normalise_cams(pick(cams_at_scale)), size=size, mode="bilinear", align_corners=False)
        attention = maps if attention is None else torch.maximum(attention, maps)
    assert attention is not None, "scales must not be empty"
    return attention


class SegmenterGraph(nn.Module):
    """§3.4 inference with static-shape ops, so TensorRT can build it with dynamic N, H, W: the graph form of the
    rule that ``wsvs.runtime.contract`` states in numpy (``present_classes``, then ``labels_from_foreground`` with
    the classes in slot order), and a test holds the two equal.

    The ``top_k`` most likely classes of each image (k fixed at export) get multi-scale attention and go
    through the decoder as one batch of N*k maps; the slots of classes under the threshold are zeroed, so
    a pixel is background unless some confident class has foreground probability >= ``foreground_threshold``;
    on a tie the first slot, the more likely class, wins.

    Outputs: ``scores`` (N, C) class probabilities; ``classes`` (N, k) int64 indices of the selected
    classes, most likely first; ``probs`` (N, k, H, W) foreground probability of each selected class
    (0 for a class under the threshold); ``labels`` (N, H, W) int32, 0 background, else 1 + class index.
    """

    def __init__(self, encoder: Encoder, decoder: Decoder, scales: Sequence[float], class_threshold: float,
                 foreground_threshold: float, top_k: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.scales = tuple(scales)
        self.class_threshold = class_threshold
        self.foreground_threshold = foreground_threshold
        self.top_k = top_k

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = images.shape[-2:]
        logits, cams = self.encoder(images)
        scores = torch.sigmoid(logits)
        top_scores, classes = torch.topk(scores, self.top_k, dim=1)
        # Attention is computed per class map, so picking the k selected CAMs before resizing equals
        # picking them from multiscale_attention's result, and resizes k maps instead of C.
        attention = attention_over_scales(
            self.encoder, images, cams, self.scales,
            lambda maps: torch.gather(maps, 1, classes[:, :, None, None].expand(-1, -1, *maps.shape[-2:])))
        foreground = torch.sigmoid(self.decoder(attention.reshape(-1, 1, *size))).reshape(attention.shape)
        probs = foreground * (top_scores > self.class_threshold).to(foreground.dtype)[:, :, None, None]
        best, slot = probs.max(dim=1)
        best_class = torch.gather(classes, 1, slot.flatten(1)).reshape(slot.shape)
        labels = torch.where(best >= self.foreground_threshold, best_class + 1, torch.zeros_like(best_class))
        return scores, classes, probs, labels.to(torch.int32)


class EncoderGraph(nn.Module):
    """f_enc for the video runtime: ``scores`` (N, C) probabilities, ``features`` F(x) (N, d, h, w) and raw
    ``cams`` (N, C, h, w) at stride 8, and multi-scale normalised ``attention`` (N, C, H, W) in [0, 1]."""

    def __init__(self, encoder: Encoder, scales: Sequence[float]) -> None:
        super().__init__()
        self.encoder = encoder
        self.scales = tuple(scales)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        captured: list[torch.Tensor] = []
        # F(x) is the output of the encoder's ``extra`` block; a hook takes it from the same forward pass.
        hook = self.encoder.extra.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            logits, cams = self.encoder(images)
        finally:
            hook.remove()
        attention = attention_over_scales(self.encoder, images, cams, self.scales, lambda maps: maps)
        return torch.sigmoid(logits), captured[0], cams, attention


class DecoderGraph(nn.Module):
    """f_dec for the video runtime: attention (N, 1, H, W) in [0, 1] -> ``foreground`` probability."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(attention))


def graph_modules(model: WSVSModel, meta: ModelMetadata, top_k: int) -> dict[str, nn.Module]:
    """The graphs of ``model``, in eval mode, by name: "segmenter", "encoder", "decoder"."""
    return {
        "segmenter": SegmenterGraph(model.encoder, model.decoder, meta.scales, meta.class_threshold,
                                    meta.foreground_threshold, top_k).eval(),
        "encoder": EncoderGraph(model.encoder, meta.scales).eval(),
        "decoder": DecoderGraph(model.decoder).eval(),
    }
