"""The network of §3: encoder f_enc (VGG-16 + new conv + GAP + FC, CAM attention, Eq. 2) and decoder f_dec.

Architectures are built from a name in ``ARCHITECTURES`` and an ``ArchConfig`` (``wsvs.runtime.contract``), which
is what a checkpoint's metadata records, so a checkpoint can be rebuilt without pickled code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsvs.runtime.contract import IMAGENET_MEAN, IMAGENET_STD, ArchConfig

from .efficientnet_lite import HEAD_CHANNELS, EfficientNetLite0, imagenet_state_dict

# VGG-16 conv1_1..conv5_3 ("M" = 2x2 max-pool); pool5 is dropped as in CAM.
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512)


def _scaled(channels: int, width: float) -> int:
    return max(4, round(channels * width))


def vgg16_features(width: float, batch_norm: bool) -> nn.Sequential:
    """VGG-16 ``features`` with torchvision's module indices, so ``features.N.*`` weights of torchvision's
    ``vgg16`` (or ``vgg16_bn`` with ``batch_norm``) load as they are.

    pool4 keeps its index but becomes a stride-1 pool and conv5 is dilated by 2, so CAMs have stride 8
    rather than 16 (as DeepLab does with the same weights): finer attention maps at the same cost in weights.
    """
    layers: list[nn.Module] = []
    in_channels, pools = 3, 0
    for item in VGG16_LAYOUT:
        if item == "M":
            pools += 1
            layers.append(nn.MaxPool2d(3, stride=1, padding=1) if pools == 4 else nn.MaxPool2d(2, 2))
            continue
        out_channels = _scaled(int(item), width)
        dilation = 2 if pools == 4 else 1
        layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out_channels
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """He initialisation (as torchvision's VGG): PyTorch's default is too small for 14 plain conv layers
    to train from scratch, which the demo and tests do."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class Backbone:
    """One row of ``BACKBONES``: the convolutional trunk of f_enc, under §3.1's new conv layer, GAP and FC."""

    features: Callable[[ArchConfig], nn.Module]
    channels: Callable[[ArchConfig], int]  # of its output
    stride: Callable[[ArchConfig], int]  # of its output
    mean: tuple[float, ...]  # the normalisation its pretrained weights expect (RGB in [0, 1])
    std: tuple[float, ...]
    # loads its ImageNet weights into the trunk; None where they do not ship (VGG-16: --backbone-weights FILE)
    pretrained: Callable[[nn.Module], None] | None
    # ONNX node names (a regex) that int8 export leaves in float: the layers whose quantization moves labels most
    int8_float_nodes: str | None = None


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(lambda arch: vgg16_features(arch.width, arch.batch_norm), lambda arch: _scaled(512, arch.width),
                      lambda arch: 8, IMAGENET_MEAN, IMAGENET_STD, None),
    # EfficientNet-Lite0's weights expect (x - 127) / 128 for x in [0, 255].
    "efficientnet-lite0": Backbone(lambda arch: EfficientNetLite0(arch.output_stride), lambda arch: HEAD_CHANNELS,
                                   lambda arch: arch.output_stride, (127 / 255,) * 3, (128 / 255,) * 3,
                                   lambda trunk: trunk.load_state_dict(imagenet_state_dict()),
                                   # the stem and blocks 0-3 (strides 2-8): labels equal to fp32 on held-out
                                   # training frames 94.78% all int8, 97.35% with these in float (RESULTS.md)
                                   int8_float_nodes=r"^/encoder/features/(_conv_stem|_blocks\.[0-3]/)"),
}


def backbone_of(arch: ArchConfig) -> Backbone:
    """The ``BACKBONES`` row an architecture names; an unknown name is a ValueError listing the known ones."""
    if arch.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {arch.backbone!r} (known: {', '.join(BACKBONES)})")
    return BACKBONES[arch.backbone]


class Encoder(nn.Module):
    """f_enc: a backbone's features (VGG-16 in the paper), a new 3x3 conv, global average pooling and a fully
    connected classifier."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        backbone = backbone_of(arch)
        self.stride = backbone.stride(arch)
        self.features = backbone.features(arch)
        feat = backbone.channels(arch)
        extra = _scaled(arch.extra_channels, arch.width)
        # With batch_norm the new layer is normalised too: without it, most of its ReLUs die early when training
        # from scratch and only one or two classes are ever learned.
        self.extra = nn.Sequential(nn.Conv2d(feat, extra, 3, padding=1),
                                   *([nn.BatchNorm2d(extra)] if arch.batch_norm else []), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(extra, arch.num_classes)
        self.lse_sharpness = arch.lse_sharpness
        # VGG-16 trains from scratch here (no ImageNet weights ship), so all of it is initialised; a trunk with
        # shipped weights keeps its own layers' initialisation until they are loaded.
        for part in (self,) if backbone.pretrained is None else (self.extra, self.classifier):
            init_weights(part)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """F(x): the last convolutional layer's output, (N, d, h, w)."""
        return self.extra(self.features(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (N, C) and CAMs alpha^c = F(x) W y^c for every class (N, C, h, w), Eq. 2."""
        features = self.feature_map(images)
        cams = torch.einsum("ndhw,cd->nchw", features, self.classifier.weight)
        if self.lse_sharpness == 0:
            return self.classifier(features.mean(dim=(2, 3))), cams
        # (1/r) log mean exp(r x) = m + (1/r) log mean exp(r (x - m)), m the maximum: stable, and with a mean
        # rather than a log of the position count, exported graphs stay right at every input size
        r, flat = self.lse_sharpness, cams.flatten(2)
        peak = flat.amax(dim=2, keepdim=True)
        pooled = peak.squeeze(2) + torch.log(torch.exp(r * (flat - peak)).mean(dim=2)) / r
        return pooled + self.classifier.bias, cams


def normalise_cams(cams: torch.Tensor) -> torch.Tensor:
    """ReLU, then divide each map by its maximum so attention lies in [0, 1]."""
    cams = F.relu(cams)
    peak = cams.flatten(2).amax(dim=2).clamp_min(1e-5)
    return cams / peak[..., None, None]


def multiscale_attention(encoder: Encoder, images: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Normalised CAMs for every class at several input scales, resized to the input and max-pooled (§3.2).

    ``images`` are normalised (N, 3, H, W); the result is (N, C, H, W) in [0, 1].
    """
    size = images.shape[-2:]
    merged = None
    for scale in scales:
        scaled = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                         align_corners=False)
        _, cams = encoder(scaled)
        cams = F.interpolate(normalise_cams(cams), size=size, mode="bilinear", align_corners=False)
        merged = cams if merged is None else torch.maximum(merged, cams)
    assert merged is not None, "scales must not be empty"
    return merged


# Unpooling switches are a softmax over each 2x2 window at this temperature, not a hard argmax: two nearly equal
# activations then share the value rather than hand it whole to whichever wins by a rounding difference, which
# made ONNX Runtime's and PyTorch's probabilities differ by up to 0.1 at a few pixels. The decoder's activations
# come out of batch norm + ReLU at a scale of about 1, so at 0.1 the switches are still nearly one-hot.
SWITCH_TEMPERATURE = 0.1


class SwitchUnpool(nn.Module):
    """Max-unpooling from pooling "switches" using only standard ops (TensorRT has no MaxUnpool).

    The switches weight the positions of each 2x2 window of the pre-pool input (1 at a clear maximum);
    unpooling puts the value there via a nearest upsample times those weights.
    """

    def forward(self, pooled: torch.Tensor, switches: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(pooled, size=switches.shape[-2:], mode="nearest")
        return up * switches


def max_pool_with_switches(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 max-pool (ceil mode, so odd sizes round-trip) and the soft switches: per window, the softmax of the
    positions' values at ``SWITCH_TEMPERATURE``."""
    size = x.shape[-2:]
    pooled = F.max_pool2d(x, 2, 2, ceil_mode=True)
    weights = torch.exp((x - F.interpolate(pooled, size=size, mode="nearest")) / SWITCH_TEMPERATURE)
    # Window sums: one zero row and column padded on, then floor-mode pooling covers ceil(H/2) x ceil(W/2)
    # windows whatever the parity, with no size-dependent constant in an exported graph.
    sums = 4 * F.avg_pool2d(F.pad(weights, (0, 1, 0, 1)), 2, 2)
    return pooled, weights / F.interpolate(sums, size=size, mode="nearest")


class Decoder(nn.Module):
    """f_dec (§3.3): a deconvolution network from a one-channel attention map to foreground logits.

    conv+pool stages record switches; mirrored unpool+deconvolution stages restore the input resolution.
    Shared by all classes: it sees only the attention map, never the class.
    """

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        # The decoder is cheap next to the encoder, so it keeps at least 16 channels at any width.
        channels = [max(16, _scaled(arch.decoder_channels * 2**i, arch.width))
                    for i in range(arch.decoder_depth)]
        self.down = nn.ModuleList()
        in_channels = 1
        for out_channels in channels:
            self.down.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                           nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))
            in_channels = out_channels
        self.unpool = SwitchUnpool()
        self.up = nn.ModuleList()
        for out_channels in reversed([channels[0], *channels[:-1]]):
            self.up.append(nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 3, padding=1),
                                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))
            in_channels = out_channels
        self.head = nn.Conv2d(in_channels, 1, 1)

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) attention in [0, 1] -> (N, 1, H, W) foreground logits."""
        x = attention
        switches = []
        for block in self.down:
            x, switch = max_pool_with_switches(block(x))
            switches.append(switch)
        for block, switch in zip(self.up, reversed(switches), strict=True):
            x = block(self.unpool(x, switch))
        return self.head(x)


class WSVSModel(nn.Module):
    """Encoder and decoder together: what a checkpoint holds."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.encoder = Encoder(arch)
        self.decoder = Decoder(arch)


ARCHITECTURES: dict[str, Callable[[ArchConfig], WSVSModel]] = {"vgg16-cam-deconv": WSVSModel}
