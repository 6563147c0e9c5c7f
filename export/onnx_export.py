"""Checkpoint -> three fp32 ONNX graphs (segmenter, encoder, decoder) with dynamic batch, height and width.

Every graph carries its metadata in ``metadata_props`` (``wsvs.runtime.contract.GraphMetadata``: string values,
JSON where structured), so the runtime needs nothing besides the ``.onnx`` file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

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
