"""Checkpoint -> three fp32 ONNX graphs (segmenter, encoder, decoder) with dynamic batch, height and width.

Every graph carries its metadata in ``metadata_props`` (``wsvs.runtime.contract.GraphMetadata``: string values,
JSON where structured), so the runtime needs nothing besides the ``.onnx`` file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from wsvs.runtime.contract import GraphMetadata, ModelMetadata
from wsvs.training.graphs import OUTPUT_NAMES, graph_modules
from wsvs.training.models import WSVSModel

GRAPHS = ("segmenter", "encoder", "decoder")
INPUT_NAMES = {"segmenter": "images", "encoder": "images", "decoder": "attention"}


@dataclass(frozen=True)
class GraphPaths:
    """Where the three graphs of one export go: ``X.onnx``, ``X.encoder.onnx``, ``X.decoder.onnx``."""

    segmenter: Path
    encoder: Path
    decoder: Path

    @classmethod
    def beside(cls, segmenter: Path, suffix: str = ".onnx") -> GraphPaths:
        stem = segmenter.name[: -len(suffix)] if segmenter.name.endswith(suffix) else segmenter.name
        return cls(segmenter, segmenter.with_name(f"{stem}.encoder{suffix}"),
                   segmenter.with_name(f"{stem}.decoder{suffix}"))

    def items(self) -> list[tuple[str, Path]]:
        return [(name, getattr(self, name)) for name in GRAPHS]


def dynamic_axes(graph: str) -> dict[str, dict[int, str]]:
    """Batch, height and width are dynamic on the input and on every output that has them."""
    image_axes = {0: "N", 2: "H", 3: "W"}
    outputs = {
        "segmenter": {"scores": {0: "N"}, "classes": {0: "N"}, "probs": image_axes, "labels": {0: "N", 1: "H", 2: "W"}},
        "encoder": {"scores": {0: "N"}, "features": {0: "N", 2: "h", 3: "w"}, "cams": {0: "N", 2: "h", 3: "w"},
                    "attention": image_axes},
        "decoder": {"foreground": image_axes},
    }[graph]
    return {INPUT_NAMES[graph]: image_axes, **outputs}


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def deconvolutions_as_convolutions(model: onnx.ModelProto) -> None:
    """Replace each stride-1 ConvTranspose (the decoder's deconvolutions) by the Conv it equals: weights with
    input and output channels swapped and the kernel flipped, padding ``k - 1 - p``. The result is the same to
    rounding, and ONNX Runtime's CPU convolution runs it about 3x faster than its transposed convolution (im2col
    and col2im around a GEMM); for TensorRT a convolution also takes per-channel int8 weights, a deconvolution
    only per-tensor ones. Other ConvTransposes (strided, grouped, dilated) are left as they are."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for node in graph.node:
        if node.op_type != "ConvTranspose" or node.input[1] not in weights or users[node.input[1]] != 1:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(weights[node.input[1]].dims[2:])
        ones = [1] * len(kernel)
        if (set(attributes) - {"kernel_shape", "pads", "strides", "dilations", "group"}
                or attributes.get("strides", ones) != ones or attributes.get("dilations", ones) != ones
                or attributes.get("group", 1) != 1):
            continue
        pads = attributes.get("pads", [0] * 2 * len(kernel))
        swapped = onnx.numpy_helper.to_array(weights[node.input[1]]).swapaxes(0, 1)
        flipped = np.ascontiguousarray(np.flip(swapped, axis=tuple(range(2, swapped.ndim))))
        weights[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(flipped, node.input[1]))
        conv_pads = [k - 1 - p for k, p in zip(kernel * 2, pads)]
        node.op_type = "Conv"
        del node.attribute[:]
        node.attribute.extend([onnx.helper.make_attribute("kernel_shape", kernel),
                               onnx.helper.make_attribute("pads", conv_pads)])


def export_graph(module: torch.nn.Module, graph: str, path: Path, opset: int, props: dict[str, str]) -> None:
    """Trace one wrapper to ONNX at ``path`` (TorchScript exporter: it needs no onnxscript and keeps
    Resize/MaxPool attributes TensorRT parses), attach metadata and run the full checker."""
    channels = 1 if graph == "decoder" else 3
    example = torch.rand(1, channels, 65, 49) if graph == "decoder" else torch.randn(1, channels, 65, 49)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic, which dynamic_axes covers
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAMES[graph]], output_names=list(OUTPUT_NAMES[graph]),
                          dynamic_axes=dynamic_axes(graph), do_constant_folding=True)
    model = onnx.load(str(path))
    deconvolutions_as_convolutions(model)
    set_metadata(model, props)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_onnx(model: WSVSModel, meta: ModelMetadata, paths: GraphPaths, opset: int, top_k: int,
                checkpoint_sha256: str) -> None:
    """Write the fp32 segmenter, encoder and decoder graphs; each records ``checkpoint_sha256``
    (``contract.checkpoint_digest`` of the checkpoint folder), which the runtime checks against the checkpoint
    beside the graph."""
    modules = graph_modules(model, meta, top_k)
    for graph, path in paths.items():
        props = GraphMetadata.of(meta, graph, "fp32", top_k, checkpoint_sha256).to_props()
        export_graph(modules[graph], graph, path, opset, props)
