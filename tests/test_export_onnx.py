"""ONNX export: parity with PyTorch in ONNX Runtime (fp32, fp16, int8 Q/DQ), TensorRT-parsable graphs, and the
`wsvs-export` command's handling of bad input."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsvs.export import cli, onnx_export, quantize, verify
from wsvs.export.tensorrt_build import ShapeProfile, parse_shape
from wsvs.runtime import backends, cuda_api
from wsvs.runtime.contract import ArchConfig, ModelMetadata, checkpoint_digest, labels_from_foreground, present_classes
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import write_image_rgb
from wsvs.runtime.metrics import ConfusionMatrix
from wsvs.runtime.preprocess import normalise
from wsvs.runtime.timing import synthetic_images
from wsvs.training.checkpoint import load_checkpoint, save_checkpoint
from wsvs.training.graphs import SegmenterGraph
from wsvs.training.models import WSVSModel

TENSORRT_OPS = Path(__file__).resolve().parents[1] / "export" / "tensorrt_ops.txt"
TOP_K = 3


def fit_decoder_to_attention(model: WSVSModel, steps: int = 30) -> None:
    """A few Adam steps teach the decoder 'foreground where attention > 0.5', so its probabilities spread
    over [0, 1] as a trained decoder's do (a random one hugs 0.5 and its labels flip on any rounding)."""
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.decoder.parameters(), lr=1e-2)
    model.decoder.train()
    for _ in range(steps):
        attention = F.interpolate(torch.rand(4, 1, 6, 6, generator=generator), size=(64, 64), mode="bilinear",
                                  align_corners=False)
        loss = F.binary_cross_entropy_with_logits(model.decoder(attention), (attention > 0.5).float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.decoder.eval()


def save_tiny_checkpoint(folder: Path) -> Path:
    """A width-1/8 model of 5 classes: a random encoder and a decoder fitted to 'attention > 0.5'."""
    torch.manual_seed(0)
    arch = ArchConfig(num_classes=5, width=0.125, batch_norm=True)
    model = WSVSModel(arch)
    fit_decoder_to_attention(model)
    # A random encoder scores every class near 0.5: a threshold of 0.495 keeps some classes and drops others.
    meta = ModelMetadata(class_names=["ant", "bee", "cat", "dog", "eel"], arch=arch, class_threshold=0.495)
    return save_checkpoint(folder, model.eval(), meta)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def fp32_graphs(checkpoint, loaded, tmp_path_factory) -> onnx_export.GraphPaths:
    model, meta = loaded
    paths = onnx_export.GraphPaths.beside(tmp_path_factory.mktemp("onnx") / "model.onnx")
    onnx_export.export_onnx(model, meta, paths, opset=17, top_k=TOP_K,
                            checkpoint_sha256=checkpoint_digest(checkpoint))
    return paths


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    for i, image in enumerate(synthetic_images(6, 120, 150, seed=42)):
        write_image_rgb(folder / f"calib_{i}.png", image)
    return folder


@pytest.fixture(scope="module")
def low_precision_graphs(fp32_graphs, loaded, calibration_folder, tmp_path_factory) -> dict[str, Path]:
    """fp16 and int8 segmenter graphs converted from the fp32 one."""
    _, meta = loaded
    folder = tmp_path_factory.mktemp("lowp")
    quantize.to_fp16(fp32_graphs.segmenter, folder / "model.fp16.onnx")
    images = verify.folder_images(calibration_folder, 6, 161, 161)
    quantize.to_int8(fp32_graphs.segmenter, folder / "model.int8.onnx",
                     [normalise(image[None], meta.mean, meta.std) for image in images])
    return {"fp16": folder / "model.fp16.onnx", "int8": folder / "model.int8.onnx"}


def images_of(shape: tuple[int, int, int], meta: ModelMetadata, seed: int = 5) -> np.ndarray:
    return normalise(synthetic_images(*shape, seed=seed), meta.mean, meta.std)


@pytest.fixture(scope="module")
def trained(decoder_dir, tmp_path_factory) -> tuple[WSVSModel, ModelMetadata, onnx_export.GraphPaths]:
    """The small world's video-trained checkpoint and its fp32 graphs."""
    model, meta = load_checkpoint(decoder_dir)
    graphs = onnx_export.GraphPaths.beside(tmp_path_factory.mktemp("trained_onnx") / "model.onnx")
    onnx_export.export_onnx(model, meta, graphs, opset=17, top_k=TOP_K,
                            checkpoint_sha256=checkpoint_digest(decoder_dir))
    return model, meta, graphs


@pytest.mark.parametrize("shape", [(1, 321, 321), (4, 333, 257)], ids=["1x321x321", "4x333x257"])
def test_fp32_segmenter_matches_pytorch(trained, world_dir, shape):
    model, meta, graphs = trained
    count, height, width = shape
    world_images = verify.folder_images(world_dir / "images" / "JPEGImages", count, height, width)
    images = normalise(world_images, meta.mean, meta.std)
    scores, classes, probs, labels = verify.reference_segmentation(model, meta, torch.from_numpy(images), TOP_K)
    got = dict(zip(onnx_export.OUTPUT_NAMES["segmenter"], verify.onnxruntime_runner(graphs.segmenter)(images)))

    # The labels are not trivial: background, several classes, and classes dropped by the threshold.
    assert len(np.unique(labels.numpy())) >= 2 and (labels == 0).any()
    assert (scores.numpy() <= meta.class_threshold).any() and (scores.numpy() > meta.class_threshold).any()
    assert got["labels"].dtype == np.int32 and got["labels"].shape == (count, height, width)
    assert np.abs(got["scores"] - scores.numpy()).max() <= 1e-6
    np.testing.assert_array_equal(got["classes"], classes.numpy())
    assert np.mean(got["labels"] == labels.numpy()) >= 0.999
    assert np.abs(got["probs"] - probs.numpy()).max() <= 1e-4


def test_fp32_encoder_and_decoder_match_pytorch(loaded, fp32_graphs):
    model, meta = loaded
    images = images_of((2, 333, 257), meta, seed=7)
    reference = verify.reference_outputs(model, meta, "encoder", images, TOP_K)
    got = verify.onnxruntime_runner(fp32_graphs.encoder)(images)
    for name, ref, out in zip(onnx_export.OUTPUT_NAMES["encoder"], reference, got):
        assert out.shape == ref.shape, name
        assert np.abs(out - ref).max() <= 1e-4, name

    attention = verify.decoder_inputs(model, meta, images)
    (foreground,) = verify.onnxruntime_runner(fp32_graphs.decoder)(attention)
    (reference_fg,) = verify.reference_outputs(model, meta, "decoder", attention, TOP_K)
    assert np.abs(foreground - reference_fg).max() <= 1e-4
    assert np.mean((foreground >= 0.5) == (reference_fg >= 0.5)) >= 0.999


def test_low_precision_graphs_agree_with_fp32(loaded, fp32_graphs, low_precision_graphs):
    _, meta = loaded
    images = images_of((2, 161, 161), meta, seed=11)
    fp32 = dict(zip(onnx_export.OUTPUT_NAMES["segmenter"], verify.onnxruntime_runner(fp32_graphs.segmenter)(images)))
    # (max score error, label agreement); on this random encoder every class scores near the threshold and the
    # CAMs are faint, so int8 steps (7-bit weights) move labels: its agreement bound is looser than fp16's.
    bounds = {"fp16": (1e-3, 0.99), "int8": (2e-2, 0.9)}
    for precision, path in low_precision_graphs.items():
        model_proto = onnx.load(str(path))
        assert onnx_export.read_metadata(model_proto)["precision"] == precision
        ops = {node.op_type for node in model_proto.graph.node}
        if precision == "int8":
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        else:
            types = {init.data_type for init in model_proto.graph.initializer}
            assert onnx.TensorProto.FLOAT16 in types
        got = dict(zip(onnx_export.OUTPUT_NAMES["segmenter"], verify.onnxruntime_runner(path)(images)))
        max_score_error, min_label_agreement = bounds[precision]
        assert got["probs"].dtype == np.float32
        assert np.abs(got["scores"] - fp32["scores"]).max() <= max_score_error, precision
        np.testing.assert_array_equal(got["classes"], fp32["classes"])
        assert np.mean(got["labels"] == fp32["labels"]) >= min_label_agreement, precision
    assert low_precision_graphs["int8"].stat().st_size < 0.5 * fp32_graphs.segmenter.stat().st_size


# x86 CPUs without VNNI (AVX2-only, e.g. AMD Zen 3) run ONNX Runtime's int8 convolutions with vpmaddubsw: it adds
# the products of two u8 activations and two s8 weights into one int16, saturating past 32767. Activations are
# s8 in the graph but shifted by 128 to u8 there, so each spans 0..255: a pair sums to at most 2 * 255 * max|q|.
INT16_MAX, U8_MAX = 32767, 255


def max_abs_per_channel(q: np.ndarray, axis: int | None) -> np.ndarray:
    """max |q| of each slice along ``axis`` (the DequantizeLinear's channel axis); one value if per-tensor."""
    magnitude = np.abs(q.astype(np.int32))
    if axis is None or q.ndim == 0:
        return magnitude.max(keepdims=True)
    return magnitude.max(axis=tuple(i for i in range(q.ndim) if i != axis % q.ndim))


def assert_int8_cannot_saturate(path: Path) -> int:
    """Every Conv/Gemm weight of the int8 graph at ``path`` comes from a DequantizeLinear of an int8
    initializer whose channels keep |q| <= 64, so no int16 pair sum can saturate whatever the activations are;
    every Q/DQ is int8 with an explicit zero point of 0. Returns the largest |q| found."""
    model = onnx.load(str(path))
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    largest = 0
    quantized = [node for node in model.graph.node if node.op_type in quantize.INT8_OPS]
    assert quantized, path.name
    for node in quantized:
        dequantize = producers.get(node.input[1])
        assert dequantize is not None and dequantize.op_type == "DequantizeLinear", (path.name, node.name)
        # A stored int8 initializer: a weight quantized at run time would get the activations' 8-bit range.
        assert dequantize.input[0] in constants, (path.name, node.name)
        weights = constants[dequantize.input[0]]
        assert weights.dtype == np.int8, (path.name, node.name)
        axis = next((a.i for a in dequantize.attribute if a.name == "axis"), None)
        per_channel = max_abs_per_channel(weights, axis if constants[dequantize.input[1]].size > 1 else None)
        assert per_channel.max() <= 64, (path.name, node.name, int(per_channel.max()))
        assert (2 * U8_MAX * per_channel <= INT16_MAX).all(), (path.name, node.name)
        largest = max(largest, int(per_channel.max()))
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert len(node.input) == 3 and node.input[2] in constants, (path.name, node.name)  # explicit, not implied
            zero_point = constants[node.input[2]]
            assert not zero_point.any(), (path.name, node.name)
            assert zero_point.dtype == np.int8, (path.name, node.name)  # no int32 biases: TensorRT rejects them
    return largest


def test_int8_weights_cannot_saturate_16_bit_pair_sums(low_precision_graphs):
    """A property of the graph, not of this CPU: agreement tests pass on a VNNI machine whatever the weights."""
    largest = assert_int8_cannot_saturate(low_precision_graphs["int8"])
    assert 2 * U8_MAX * largest <= INT16_MAX
    assert largest == 64  # the 7-bit range is used (each channel's largest weight maps to +-64), not shrunk further


def test_deconvolutions_become_the_convolutions_they_equal():
    """A stride-1 ConvTranspose and the Conv that replaces it give the same output in ONNX Runtime, for odd
    kernels and paddings and unequal channel counts; a strided one is left alone."""
    import onnxruntime as ort

    generator = np.random.default_rng(0)
    images = generator.standard_normal((2, 5, 23, 17)).astype(np.float32)
    for kernel, pads, strides in [(3, 1, 1), (5, 1, 1), (1, 0, 1), (3, 1, 2)]:
        weights = generator.standard_normal((5, 7, kernel, kernel)).astype(np.float32)
        bias = generator.standard_normal(7).astype(np.float32)
        node = onnx.helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[kernel, kernel],
                                     pads=[pads] * 4, strides=[strides] * 2)
        graph = onnx.helper.make_graph(
            [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(images.shape))],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [onnx.numpy_helper.from_array(weights, "w"), onnx.numpy_helper.from_array(bias, "b")])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        run = [ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
               .run(None, {"x": images})[0]]
        onnx_export.deconvolutions_as_convolutions(model)
        run.append(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                   .run(None, {"x": images})[0])
        assert model.graph.node[0].op_type == ("Conv" if strides == 1 else "ConvTranspose"), (kernel, strides)
        assert run[0].shape == run[1].shape and np.abs(run[0] - run[1]).max() < 1e-4, (kernel, pads)


def test_int8_weights_are_per_channel_deconvolutions_included(low_precision_graphs, fp32_graphs):
    """The exported graphs hold the decoder's deconvolutions as convolutions, so their int8 weights have one
    scale per output channel like every convolution (TensorRT takes only per-tensor deconvolution weights)."""
    for _, path in fp32_graphs.items():
        assert "ConvTranspose" not in {node.op_type for node in onnx.load(str(path)).graph.node}, path.name
    model = onnx.load(str(low_precision_graphs["int8"]))
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    convolutions = [node for node in model.graph.node if node.op_type == "Conv"]
    assert any(node.name.startswith("/decoder/up") for node in convolutions)
    for node in convolutions:
        dequantize = producers[node.input[1]]
        channels = constants[dequantize.input[0]].shape[0]
        assert constants[dequantize.input[1]].shape == (channels,), node.name


def tensorrt_ops() -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in TENSORRT_OPS.read_text().splitlines())
    return {line for line in lines if line}


def test_graphs_use_only_tensorrt_ops(fp32_graphs, low_precision_graphs):
    """The operators the exported graphs use, against TensorRT 10.15's ONNX parser support matrix and its
    restrictions (the list's header names the source)."""
    supported = tensorrt_ops()
    assert {"Conv", "Resize", "TopK", "QuantizeLinear", "RMSNormalization"} <= supported
    assert not {"MaxUnpool", "QLinearConv", "ConvInteger"} & supported
    used = set()
    for path in [path for _, path in fp32_graphs.items()] + list(low_precision_graphs.values()):
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        constants = {init.name: init for init in model.graph.initializer}
        constants |= {node.output[0]: node.attribute[0].t for node in model.graph.node if node.op_type == "Constant"}
        used |= {node.op_type for node in model.graph.node}
        for node in model.graph.node:  # the matrix's restrictions
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "TopK":
                assert node.input[1] in constants and attributes.get("sorted", 1) == 1
                assert onnx.numpy_helper.to_array(constants[node.input[1]]).max() < 3840
            if node.op_type == "Resize":
                assert attributes["mode"] in (b"nearest", b"linear") and not attributes.get("antialias", 0)
                assert attributes["coordinate_transformation_mode"] in (b"half_pixel", b"asymmetric")
            if node.op_type in ("MaxPool", "AveragePool"):  # no Indices output, no dilation
                assert len(node.output) == 1 and set(attributes.get("dilations", [1])) == {1}
            if node.op_type == "MaxPool":  # the decoder's pools round odd sizes up
                assert attributes["ceil_mode"] == 1 or not node.name.startswith("/decoder/")
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                assert not onnx.numpy_helper.to_array(constants[node.input[2]]).any()
    assert used - supported == set()
    assert {"Conv", "TopK", "QuantizeLinear", "DequantizeLinear"} <= used  # the graphs were read


def test_graph_metadata_and_dynamic_axes(fp32_graphs, loaded):
    _, meta = loaded
    model = onnx.load(str(fp32_graphs.segmenter))
    props = onnx_export.read_metadata(model)
    assert json.loads(props["class_names"]) == meta.class_names
    assert json.loads(props["mean"]) == list(meta.mean) and json.loads(props["std"]) == list(meta.std)
    assert json.loads(props["scales"]) == list(meta.scales)
    assert float(props["class_threshold"]) == meta.class_threshold and props["top_k"] == str(TOP_K)
    assert props["graph"] == "segmenter" and props["precision"] == "fp32" and props["wsvs_version"]
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3] and model.graph.input[0].name == "images"
    assert [o.name for o in model.graph.output] == ["scores", "classes", "probs", "labels"]


def test_cli_exports_int8_and_verifies(checkpoint, calibration_folder, tmp_path, capsys):
    out = tmp_path / "out" / "seg.onnx"
    code = cli.main(["--model", str(checkpoint), "--out", str(out), "--precision", "int8",
                     "--calib", str(calibration_folder), "--minShapes", "1x3x64x64", "--optShapes", "1x3x97x97",
                     "--maxShapes", "2x3x128x128"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.decoder.onnx", "seg.encoder.onnx", "seg.onnx"]
    assert "verification passed (18 outputs)" in printed and "2x3x81x81" in printed  # the odd-size batch case
    assert onnx_export.read_metadata(onnx.load(str(out.with_name("seg.encoder.onnx"))))["precision"] == "int8"
    for path in out.parent.iterdir():
        assert_int8_cannot_saturate(path)


class SharpDecoder(nn.Module):
    """A decoder whose foreground logit is ``sharpness * (attention - 0.5)``: at a large sharpness its probabilities
    are 0 or 1, so present classes tie at many pixels."""

    def __init__(self, sharpness: float) -> None:
        super().__init__()
        self.sharpness = sharpness

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        return self.sharpness * (attention - 0.5)


@pytest.mark.parametrize(("sharpness", "ties"), [(3.0, False), (1e4, True)])
def test_segmenter_graph_is_the_runtime_rule_in_graph_ops(sharpness, ties):
    """The exported form of §3.4 gives, on its own scores and probabilities, what the runtime's numpy rule gives:
    the same present classes, and the same labels, ties going to the more likely class."""
    torch.manual_seed(0)
    arch = ArchConfig(num_classes=5, width=0.125, batch_norm=True)
    model = WSVSModel(arch).eval()
    x = torch.from_numpy(images_of((3, 67, 91), ModelMetadata(class_names=list("abcde"), arch=arch), seed=3))
    with torch.no_grad():
        class_threshold = float(torch.sigmoid(model.encoder(x)[0]).median())  # about half the classes present
        graph = SegmenterGraph(model.encoder, SharpDecoder(sharpness), (1.0, 1.5), class_threshold, 0.5, TOP_K)
        scores, classes, probs, labels = (output.numpy() for output in graph(x))

    present = np.take_along_axis(scores, classes, axis=1) > class_threshold
    image_index, class_index = present_classes(scores, class_threshold, TOP_K)
    assert sorted(zip(image_index, class_index)) == sorted((n, classes[n, k]) for n, k in zip(*np.nonzero(present)))
    assert 0 < present.sum() < present.size and not probs[~present].any()
    np.testing.assert_array_equal(labels, labels_from_foreground(probs, 0.5, classes))
    assert len(np.unique(labels)) >= 3
    assert ((probs == 1).sum(axis=1) >= 2).any() == ties  # saturated: ties, which go to the first (likelier) class


def test_verification_fails_past_tolerance():
    reference = [np.array([[0.2, 0.9]], np.float32), np.array([[3, 1]], np.int64)]
    tolerance = verify.Tolerance(atol=1e-3, rtol=0.0, min_agreement=1.0, min_label_agreement=1.0)
    cases = [(np.zeros((1, 3, 8, 8), np.float32), reference)]
    close = verify.verify_graph("segmenter", "test", lambda x: [reference[0] + 5e-4, reference[1]], cases, tolerance)
    assert all(result.passed for result in close) and close[0].max_abs == pytest.approx(5e-4, rel=1e-3)
    far = verify.verify_graph("segmenter", "test", lambda x: [reference[0] + 2e-3, reference[1] * 0], cases, tolerance)
    assert [result.passed for result in far] == [False, False] and far[1].agreement == 0.0
    assert "FAIL" in far[0].line() and "max abs 0.002" in far[0].line()



def test_engines_are_verified_on_the_runtime_tensorrt_backend(tmp_path, monkeypatch):
    """The export checks an engine with the backend that runs it in use, outputs by name in the graph's order."""
    with pytest.raises(InputError, match="TensorRT engine not found") as caught:
        verify.tensorrt_runner(tmp_path / "m.engine", "segmenter")
    assert "\n" not in str(caught.value)
    names = onnx_export.OUTPUT_NAMES["segmenter"]

    class StandIn:  # TensorRTBackend where TensorRT is missing: outputs in an order other than the graph's
        def __init__(self, path: Path) -> None:
            self.path = path

        def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
            return {name: np.full(1, names.index(name)) for name in reversed(names)}

    monkeypatch.setattr(backends, "TensorRTBackend", StandIn)
    outputs = verify.tensorrt_runner(tmp_path / "m.engine", "segmenter")(np.zeros((1, 3, 32, 32), np.float32))
    assert [int(output[0]) for output in outputs] == list(range(len(names)))

def bad_checkpoints(root: Path, good: Path) -> dict[str, Path]:
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.json").write_text((good / "model.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"not safetensors")
    unknown = root / "unknown"
    unknown.mkdir()
    meta = json.loads((good / "model.json").read_text())
    (unknown / "model.json").write_text(json.dumps({**meta, "architecture": "resnet-9000"}))
    return {"missing": root / "nowhere", "corrupt": corrupt, "unknown": unknown}


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(checkpoint, tmp_path, capsys):
    for name, folder in bad_checkpoints(tmp_path, checkpoint).items():
        before = set(folder.iterdir()) if folder.is_dir() else set()
        assert cli.main(["--model", str(folder), "--no-verify"]) == 2, name
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("wsvs-export: error:"), error
        assert (set(folder.iterdir()) if folder.is_dir() else set()) == before, name

    out = tmp_path / "shapes" / "m.onnx"
    assert cli.main(["--model", str(checkpoint), "--out", str(out), "--minShapes", "1x3x400x400", "--optShapes",
                     "1x3x321x321"]) == 2
    assert "min <= opt <= max" in capsys.readouterr().err and not out.parent.exists()
    assert cli.main(["--model", str(checkpoint), "--out", str(out), "--opt-shapes", "1x3x321"]) == 2
    assert "NxCxHxW" in capsys.readouterr().err

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert cli.main(["--model", str(checkpoint), "--out", str(blocker / "m.onnx"), "--no-verify"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot write" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "corrupt", "unknown"]  # no temporary files
    assert cli.main(["--model", str(checkpoint), "--precision", "int8", "--no-verify"]) == 2
    assert "--calib" in capsys.readouterr().err


def test_cli_engine_without_tensorrt_fails_cleanly(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what Python does where the package is not installed
    before = set(checkpoint.iterdir())
    assert cli.main(["--model", str(checkpoint), "--out-engine", str(tmp_path / "m.engine")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "TensorRT is not installed" in error
    assert set(checkpoint.iterdir()) == before and not list(tmp_path.iterdir())


def test_cli_engine_build_failing_to_start_cuda_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys,
                                                                               monkeypatch):
    """trt.Builder raises TypeError ("factory function returned nullptr") when CUDA cannot start: exit 2, one line,
    and neither the engines nor the ONNX graphs of that run are left behind."""

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    def builder(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(Logger=Logger, Builder=builder))
    monkeypatch.setattr(cuda_api, "device_name", lambda device=0: "NVIDIA Stand-in GPU")
    out = tmp_path / "out"
    assert cli.main(["--model", str(checkpoint), "--out", str(out / "m.onnx"), "--out-engine",
                     str(out / "m.engine")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "TensorRT cannot start on this GPU (pybind11::init(): factory" in error
    assert not list(out.iterdir())


def test_cli_writes_nothing_when_an_engine_fails_verification(checkpoint, tmp_path, capsys, monkeypatch):
    """Engines are built and checked in a scratch folder; a verification failure leaves no output at all."""
    from wsvs.export import tensorrt_build

    def build_engine(onnx_path, engine_path, shapes, precision, metadata, timing_cache=None):
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        engine_path.write_bytes(b"engine")
        tensorrt_build.sidecar_path(engine_path).write_text("{}")
        return {}

    def tensorrt_runner(path, graph):  # an engine whose outputs are all zeros: far from PyTorch
        assert path.read_bytes() == b"engine"  # it checks the engine it built, before anything is written
        run = verify.onnxruntime_runner(Path(str(path).replace("engines", "graphs")).with_suffix(".onnx"))
        return lambda inputs: [np.zeros_like(output) for output in run(inputs)]

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace())
    monkeypatch.setattr(cuda_api, "device_name", lambda device=0: "NVIDIA Stand-in GPU")
    monkeypatch.setattr(tensorrt_build, "build_engine", build_engine)
    monkeypatch.setattr(verify, "tensorrt_runner", tensorrt_runner)
    out = tmp_path / "out"
    code = cli.main(["--model", str(checkpoint), "--out", str(out / "m.onnx"), "--out-engine", str(out / "m.engine"),
                     "--minShapes", "1x3x32x32", "--optShapes", "1x3x64x64", "--maxShapes", "2x3x64x64"])
    captured = capsys.readouterr()
    assert code == 1
    assert "tensorrt" in captured.out and "FAIL" in captured.out and "nothing was written" in captured.err
    assert "onnxruntime" in captured.out and not list(out.iterdir())


def test_shape_flags():
    assert parse_shape("1x3x321x321") == (1, 3, 321, 321)
    assert parse_shape("images:4x3x257x333") == (4, 3, 257, 333)
    for bad in ("1x3x321", "ax3x3x3", "1x3x321x321x1", ""):
        with pytest.raises(InputError):
            parse_shape(bad)
    profile = ShapeProfile((1, 3, 128, 128), (2, 3, 321, 321), (4, 3, 512, 512))
    assert profile.for_input("decoder") == ((1, 1, 128, 128), (2, 1, 321, 321), (4, 1, 512, 512))
    assert profile.for_input("segmenter")[2] == (4, 3, 512, 512)
    assert cli.verification_shapes(profile) == [(2, 3, 321, 321), (4, 3, 225, 225)]
    with pytest.raises(InputError, match="min <= opt <= max"):
        ShapeProfile((1, 3, 128, 128), (2, 3, 321, 321), (1, 3, 512, 512))
    with pytest.raises(InputError, match="3 channels"):
        ShapeProfile((1, 1, 128, 128), (1, 1, 321, 321), (1, 1, 512, 512))


def test_trained_model_miou_survives_export(trained, world_dir, tmp_path):
    """mmdeploy-style regression on the small world's val images with the video-trained checkpoint: fp32 ONNX
    keeps PyTorch's mIoU, fp16 stays within 0.5 points of fp32 and int8 Q/DQ within 2 points."""
    from wsvs.training.voc import VOCDataset

    model, meta, graphs = trained
    val = VOCDataset(world_dir / "images", "val", class_names=meta.class_names)
    images = normalise(np.stack([val.image(i) for i in range(len(val))]), meta.mean, meta.std)
    truth = np.stack([val.mask(i) for i in range(len(val))])
    fp16, int8 = tmp_path / "model.fp16.onnx", tmp_path / "model.int8.onnx"
    quantize.to_fp16(graphs.segmenter, fp16)
    quantize.to_int8(graphs.segmenter, int8, [images[i:i + 1] for i in range(0, len(images), 3)])

    def miou(labels: np.ndarray) -> float:
        matrix = ConfusionMatrix(len(meta.class_names) + 1)
        for pred, gt in zip(labels, truth):
            matrix.update(pred, gt)
        return matrix.miou()

    def onnx_miou(path: Path) -> float:
        run = verify.onnxruntime_runner(path)
        return miou(np.concatenate([run(images[i:i + 4])[3] for i in range(0, len(images), 4)]))

    reference = miou(verify.reference_segmentation(model, meta, torch.from_numpy(images), TOP_K)[3].numpy())
    fp32_miou = onnx_miou(graphs.segmenter)
    assert reference > 0.15  # a model that segments, so the comparison means something
    assert abs(fp32_miou - reference) <= 1e-3
    assert abs(onnx_miou(fp16) - fp32_miou) <= 0.005
    assert abs(onnx_miou(int8) - fp32_miou) <= 0.02


def test_log_sum_exp_pooling_exports_for_every_input_size(tmp_path):
    torch.manual_seed(0)
    arch = ArchConfig(num_classes=3, width=0.125, batch_norm=True, lse_sharpness=2.0)
    model = WSVSModel(arch).eval()
    meta = ModelMetadata(class_names=["ant", "bee", "cat"], arch=arch)
    graphs = onnx_export.GraphPaths.beside(tmp_path / "model.onnx")
    digest = checkpoint_digest(save_checkpoint(tmp_path, model, meta))
    onnx_export.export_onnx(model, meta, graphs, opset=17, top_k=TOP_K, checkpoint_sha256=digest)
    for path in (graphs.segmenter, graphs.encoder):  # both graphs give the class scores first
        for shape in ((1, 64, 64), (2, 97, 131)):
            images = images_of(shape, meta)
            with torch.no_grad():
                logits, _ = model.encoder(torch.from_numpy(images))
            got = verify.onnxruntime_runner(path)(images)[0]
            np.testing.assert_allclose(got, torch.sigmoid(logits).numpy(), atol=1e-5, err_msg=f"{path.name} {shape}")


def test_top_k_classes_agree_where_their_scores_tie() -> None:
    """A trained model scores most absent classes near 1e-9: two of them swapping places in the top-k is no
    disagreement, a class whose score differs is."""
    from wsvs.export.verify import DEFAULT_TOLERANCES, class_agreement

    scores = np.array([[0.9, 2e-9, 1e-9, 0.5]], np.float32)
    reference = np.array([[0, 3, 1]])
    tolerance = DEFAULT_TOLERANCES["fp32"]
    assert class_agreement(scores, reference, np.array([[0, 3, 2]]), tolerance) == 1.0
    assert class_agreement(scores, reference, np.array([[0, 1, 3]]), tolerance) == pytest.approx(1 / 3)
