"""Encoder/CAM/decoder behaviour and checkpoint safety."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsvs.runtime.contract import ArchConfig, ModelMetadata
from wsvs.runtime.errors import InputError
from wsvs.training.checkpoint import load_backbone_weights, load_checkpoint, save_checkpoint
from wsvs.training.models import Encoder, SwitchUnpool, WSVSModel, max_pool_with_switches


def test_cam_is_eq2_and_gap_of_cam_gives_the_logits() -> None:
    torch.manual_seed(0)
    encoder = Encoder(ArchConfig(num_classes=5, width=0.125)).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        logits, cams = encoder(x)
        features = encoder.feature_map(x)
    # alpha^c = F(x) W y^c: the CAM of class c is the feature map projected on row c of the FC weights.
    expected = torch.einsum("ndhw,d->nhw", features, encoder.classifier.weight[3])
    torch.testing.assert_close(cams[:, 3], expected)
    # GAP is linear, so averaging the CAM and adding the bias gives the logits.
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + encoder.classifier.bias, logits, atol=1e-5, rtol=1e-5)
    assert encoder.stride == 8 and cams.shape[-2:] == (64 // encoder.stride, 80 // encoder.stride)


def test_switch_unpool_equals_max_unpool_where_windows_have_a_clear_maximum() -> None:
    torch.manual_seed(1)
    # distinct values 2 apart, 20 switch temperatures: every window has a clear maximum; odd sizes
    x = 2 * torch.randperm(3 * 4 * 11 * 15).reshape(3, 4, 11, 15).float()
    pooled, switches = max_pool_with_switches(x)
    reference_pooled, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    torch.testing.assert_close(pooled, reference_pooled)
    reference = F.max_unpool2d(reference_pooled, indices, 2, 2, output_size=x.shape[-2:])
    torch.testing.assert_close(SwitchUnpool()(pooled, switches), reference)


def test_switch_unpool_is_continuous_at_a_near_tie() -> None:
    """A rounding-sized change that swaps a window's maximum moves the unpooled values by as little."""
    window = torch.tensor([[[[1.0, 1.0 + 1e-6], [0.2, 0.0]]]])
    swapped = torch.tensor([[[[1.0 + 1e-6, 1.0], [0.2, 0.0]]]])
    unpooled = [SwitchUnpool()(*max_pool_with_switches(x)) for x in (window, swapped)]
    assert (unpooled[0] - unpooled[1]).abs().max() < 1e-4
    # the tied pair shares the value; the others, 8 and 10 temperatures below, are left with almost nothing
    torch.testing.assert_close(unpooled[0][0, 0, 0], torch.tensor([0.5, 0.5]), atol=1e-3, rtol=0)
    assert unpooled[0][0, 0, 1].max() < 1e-3


@pytest.mark.parametrize("size", [(64, 64), (97, 133), (33, 21)])
def test_decoder_restores_input_resolution(size: tuple[int, int]) -> None:
    decoder = WSVSModel(ArchConfig(num_classes=3, width=0.125)).decoder.eval()
    with torch.no_grad():
        out = decoder(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *size)


def test_backbone_weights_load_into_features(tmp_path) -> None:
    model = WSVSModel(ArchConfig(num_classes=20, width=1.0))
    fake = {f"features.{k}": torch.randn_like(v) for k, v in model.encoder.features.state_dict().items()}
    fake["classifier.0.weight"] = torch.randn(4096, 25088 // 64)  # torchvision's FC layers are ignored
    path = tmp_path / "vgg16.pth"
    torch.save(fake, path)
    assert load_backbone_weights(model, path) == 26  # 13 convs x (weight, bias)
    torch.testing.assert_close(model.encoder.features[28].weight, fake["features.28.weight"])

    narrow = WSVSModel(ArchConfig(num_classes=20, width=0.5))
    with pytest.raises(InputError, match="--width 1"):
        load_backbone_weights(narrow, path)


def _saved(tmp_path):
    torch.manual_seed(2)
    model = WSVSModel(ArchConfig(num_classes=3, width=0.125)).eval()
    meta = ModelMetadata(class_names=["a", "b", "c"], arch=ArchConfig(num_classes=3, width=0.125))
    return model, save_checkpoint(tmp_path / "ckpt", model, meta)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path) -> None:
    model, folder = _saved(tmp_path)
    loaded, meta = load_checkpoint(folder)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(x)[0], model.encoder(x)[0], atol=0, rtol=0)
    assert meta.class_names == ["a", "b", "c"] and meta.scales == (0.75, 1.0, 1.5)
    assert json.loads((folder / "model.json").read_text())["wsvs_version"]


def test_bad_checkpoints_are_one_line_input_errors(tmp_path) -> None:
    _, folder = _saved(tmp_path)
    meta_path = folder / "model.json"
    good = json.loads(meta_path.read_text())

    meta_path.write_text(json.dumps({**good, "arch": {**good["arch"], "width": 0.25}}))
    with pytest.raises(InputError, match="do not match the architecture"):
        load_checkpoint(folder)
    meta_path.write_text(json.dumps({**good, "architecture": "resnet-unknown"}))
    with pytest.raises(InputError, match="unknown architecture"):
        load_checkpoint(folder)
    meta_path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_checkpoint(folder)
    meta_path.write_text(json.dumps(good))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError, match="corrupt weights") as info:
        load_checkpoint(folder)
    assert "\n" not in str(info.value)


def test_cli_reports_a_missing_checkpoint_with_exit_code_2(tmp_path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "wsvs.runtime.cli", "cam", str(image), "--model",
                             str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "checkpoint folder not found" in result.stderr


def test_runtime_imports_without_torch() -> None:
    # torch made unimportable: every module of the runtime and the CUDA kernel loaders must still import.
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['torch'] = None\n"
        "import wsvs.runtime, wsvs.cuda_kernels\n"
        "for pkg in (wsvs.runtime, wsvs.cuda_kernels):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n"
        "print('ok', len(list(pkgutil.iter_modules(wsvs.runtime.__path__))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[1]) >= 4


def test_average_precision_known_answer() -> None:
    from wsvs.training.train_encoder import average_precision

    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    targets = np.array([[1], [0], [1], [0]])
    # hits at ranks 1 and 3: precision 1/1 and 2/3
    assert average_precision(scores, targets)[0] == pytest.approx((1 + 2 / 3) / 2)
