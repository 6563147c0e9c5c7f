"""Precision lives in the ONNX graph (TensorRT 11 builds strongly typed networks only):

- fp16: weights and activations converted to float16, with the ops that decide classes, normalise or
  resize kept in float32 and the graph's inputs and outputs left float32.
- int8: explicit symmetric Q/DQ pairs around convolutions, deconvolutions and the classifier, from static
  MinMax calibration on images (the zero points are 0, as TensorRT requires).

Both run in ONNX Runtime's CPU provider, so they are checked without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from .onnx_export import read_metadata, set_metadata

# Converted to float16: the convolution trunks of encoder and decoder and the unpooling arithmetic. Everything
# else stays float32: class scores and their selection (a flipped top-k changes labels), the per-map
# normalisation and the averages over many values, and the bilinear resizes of images and attention.
FP16_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "Relu", "MaxPool", "Mul", "Equal"}
INT8_OPS = ["Conv", "ConvTranspose", "Gemm"]


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


def to_int8(source: Path, target: Path, calibration: list[np.ndarray]) -> None:
    """Quantize an fp32 graph to int8 Q/DQ with static calibration on ``calibration`` input batches."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(source))
    props = read_metadata(model)
    input_name = model.graph.input[0].name
    quantize_static(
        str(source), str(target), _Batches(input_name, calibration), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=INT8_OPS, per_channel=True, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        # Symmetric ranges give zero points of 0 (TensorRT's Q/DQ rule); the dedicated Q/DQ pair per
        # consumer keeps each quantised op's input explicit for TensorRT's fusions.
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "DedicatedQDQPair": True})
    quantized = onnx.load(str(target))
    set_metadata(quantized, {**props, "precision": "int8"})
    onnx.checker.check_model(quantized, full_check=True)
    onnx.save(quantized, str(target))
