"""Precision lives in the ONNX graph (TensorRT 11 builds strongly typed networks only):

- fp16: weights and activations converted to float16, with the ops that decide classes, normalise or
  resize kept in float32 and the graph's inputs and outputs left float32.
- int8: explicit symmetric Q/DQ pairs around convolutions, deconvolutions and the classifier, from static
  MinMax calibration on images (the zero points are 0, as TensorRT requires). Weights use 7 bits, |q| <= 64:
  on x86 CPUs without VNNI (AVX2-only, e.g. AMD Zen 3) ONNX Runtime's u8s8 kernels add two u8 x s8 products
  into one int16 (vpmaddubsw), and with s8 activations shifted to u8 (0..255) a pair reaches 2 * 255 * 127,
  far past 32767 (int8 labels agreed with fp32 on only 52-58% of pixels there); 2 * 255 * 64 = 32640 fits.
  Every such weight is a stored int8 initializer, including the encoder weights the image scales share;
  biases stay float32. A backbone may name layers to leave in float (``int8_float_nodes``: Lite0's early,
  high-resolution layers, where int8 moved the most labels). Conv and Gemm weights have one scale per output
  channel, the decoder's deconvolutions included: the fp32 graph holds them as the convolutions they equal
  (``deconvolutions_as_convolutions``), so they escape TensorRT's per-tensor-only rule for deconvolution
  weights (NVIDIA/TensorRT issues 1694 and 2380).

Both run in ONNX Runtime's CPU provider, so they are checked without a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from .onnx_export import read_metadata, set_metadata

# Converted to float16: the convolution trunks of encoder and decoder and the unpooling arithmetic. Everything
# else stays float32: class scores and their selection (a flipped top-k changes labels), the per-map
# normalisation and the averages over many values, and the bilinear resizes of images and attention.
FP16_OPS = {"Conv", "BatchNormalization", "Relu", "MaxPool", "Mul", "Equal"}
INT8_OPS = ["Conv", "Gemm"]


def _cast(source: str, target: str, to: int) -> onnx.NodeProto:
    return onnx.helper.make_node("Cast", [source], [target], name=f"{target}/Cast", to=to)


def to_fp16(source: Path, target: Path) -> None:
    """Convert the ``FP16_OPS`` nodes of an fp32 graph to float16, with Casts where float16 and float32
    tensors meet; weights used only by converted nodes are stored as float16. Inputs and outputs stay float32.
    """
    model = onnx.shape_inference.infer_shapes(onnx.load(str(source)))
    graph = model.graph
    is_float = {v.name for v in [*graph.input, *graph.value_info, *graph.output]
                if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    is_float |= {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    converted = [node for node in graph.node if node.op_type in FP16_OPS]
    converted_ids = {id(node) for node in converted}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    half = set()  # float tensors that are float16 from here on
    for init in graph.initializer:
        if init.name in is_float and all(id(n) in converted_ids for n in consumers.get(init.name, [])):
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init).astype(np.float16),
                                                       init.name))
            half.add(init.name)
    # A graph output made by a converted node is renamed, and a final Cast restores its name as float32.
    outputs = {out.name for out in graph.output}
    renamed = {name: f"{name}/fp16" for node in converted for name in node.output if name in outputs}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]

    nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}  # (tensor, type) -> its cast copy, made once

    def cast_of(name: str, to: int) -> str:
        if (name, to) not in casts:
            casts[name, to] = f"{name}/{'fp16' if to == onnx.TensorProto.FLOAT16 else 'fp32'}"
            nodes.append(_cast(name, casts[name, to], to))
        return casts[name, to]

    for node in graph.node:
        if id(node) in converted_ids:
            node.input[:] = [cast_of(n, onnx.TensorProto.FLOAT16) if n in is_float and n not in half else n
                             for n in node.input]
            half.update(n for n in node.output if n in is_float or n in renamed.values())
        else:
            node.input[:] = [cast_of(n, onnx.TensorProto.FLOAT) if n in half else n for n in node.input]
        nodes.append(node)
    nodes.extend(_cast(fp16_name, name, onnx.TensorProto.FLOAT) for name, fp16_name in renamed.items())
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale types; the checker infers them again
    set_metadata(model, {**read_metadata(model), "precision": "fp16"})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a list of input arrays."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def _without_weight_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Point the consumers of ``Identity(initializer)`` at the initializer itself and drop the Identity.

    The exporter shares the encoder's weights between the image scales through such Identities. ONNX Runtime's
    quantizer takes an Identity's output for an activation: those weights would be quantized at run time, per
    tensor and with the activations' full 8-bit range, instead of stored as 7-bit per-channel int8.
    """
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    outputs = {out.name for out in graph.output}
    alias = {node.output[0]: node.input[0] for node in graph.node
             if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs}
    nodes = [node for node in graph.node if not (node.op_type == "Identity" and node.output[0] in alias)]
    for node in nodes:
        node.input[:] = [alias.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [info for info in graph.value_info if info.name not in alias]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return model


def to_int8(source: Path, target: Path, calibration: list[np.ndarray], float_nodes: str | None = None) -> None:
    """Quantize an fp32 graph to int8 Q/DQ with static calibration on ``calibration`` input batches; nodes whose
    names match the regex ``float_nodes`` (a backbone's ``int8_float_nodes``) stay float32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = _without_weight_identities(onnx.load(str(source)))
    props = read_metadata(model)
    input_name = model.graph.input[0].name
    kept_float = [node.name for node in model.graph.node if float_nodes and re.search(float_nodes, node.name)]
    quantize_static(
        model, str(target), _Batches(input_name, calibration),
        quant_format=QuantFormat.QDQ, op_types_to_quantize=INT8_OPS, per_channel=True, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        # 7-bit weights (int8 in [-64, 64], still symmetric with zero point 0; activations keep [-127, 127]):
        # without VNNI, x86 kernels shift s8 activations to u8 (0..255) and sum pairs of u8 x s8 products in
        # int16 (vpmaddubsw), so |w| <= 64 keeps a pair within 2 * 255 * 64 = 32640 <= 32767 on any CPU.
        reduce_range=True, nodes_to_exclude=kept_float,
        # Symmetric ranges give zero points of 0 (TensorRT's Q/DQ rule); the dedicated Q/DQ pair per
        # consumer keeps each quantised op's input explicit for TensorRT's fusions. Biases stay float: TensorRT
        # dequantizes int8 only (an int32 bias DequantizeLinear fails to parse) and fuses float biases itself;
        # ONNX Runtime still runs these convolutions as QLinearConv.
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "DedicatedQDQPair": True,
                       "QuantizeBias": False})
    quantized = onnx.load(str(target))
    set_metadata(quantized, {**props, "precision": "int8"})
    onnx.checker.check_model(quantized, full_check=True)
    onnx.save(quantized, str(target))
