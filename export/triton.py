"""A Triton model repository for the segmenter graph: ``REPO/<name>/config.pbtxt``, ``REPO/<name>/1/model.onnx``
(platform ``onnxruntime_onnx``) and ``REPO/<name>/labels.txt`` (the class names, Triton's ``label_filename``).

Input and output names, types and dims are read from the graph itself; ``max_batch_size`` is the export profile's
largest batch, with dynamic batching on; the normalisation the input expects is in the model's ``parameters``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx

LABELS_FILE = "labels.txt"
LABELLED_OUTPUT = "scores"  # the segmenter's (N, C) class probabilities, which the class names label
ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
              onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
              onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.UINT8: "TYPE_UINT8"}


def tensor_entries(values, label_output: str | None = None) -> list[str]:
    """config.pbtxt entries of graph inputs or outputs: the batch axis left out (Triton adds it), dynamic axes -1."""
    entries = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
        label = f' label_filename: "{LABELS_FILE}"' if value.name == label_output else ""
        entries.append(f'  {{ name: "{value.name}" data_type: {ONNX_TYPES[tensor.elem_type]} '
                       f"dims: [ {', '.join(map(str, dims))} ]{label} }}")
    return entries


def write_repository(graph_path: Path, repo: Path, name: str, max_batch_size: int) -> Path:
    """Write the repository of the ONNX segmenter graph at ``graph_path`` under ``repo``; returns the model folder."""
    graph = onnx.load(str(graph_path), load_external_data=False)
    props = {prop.key: prop.value for prop in graph.metadata_props}
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(graph_path, folder / "1" / "model.onnx")
    (folder / LABELS_FILE).write_text("".join(f"{c}\n" for c in json.loads(props["class_names"])))
    parameters = [f'  {{ key: "{key}" value: {{ string_value: {json.dumps(props[key])} }} }}'
                  for key in ("mean", "std") if key in props]
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}",
             "input [", ",\n".join(tensor_entries(graph.graph.input)), "]",
             "output [", ",\n".join(tensor_entries(graph.graph.output, LABELLED_OUTPUT)), "]",
             "dynamic_batching { }", "parameters [", ",\n".join(parameters), "]"]
    (folder / "config.pbtxt").write_text("\n".join(lines) + "\n")
    return folder
