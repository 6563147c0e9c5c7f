"""`wsvs export --format triton`: every config.pbtxt parses with Triton's own ModelConfig protobuf and matches the
graph it serves."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from test_export_onnx import save_tiny_checkpoint
from tritonclient.grpc import model_config_pb2

from wsvs.export import cli
from wsvs.training.checkpoint import load_checkpoint, save_checkpoint

TYPES = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32, onnx.TensorProto.FLOAT16: model_config_pb2.TYPE_FP16,
         onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64, onnx.TensorProto.INT32: model_config_pb2.TYPE_INT32,
         onnx.TensorProto.BOOL: model_config_pb2.TYPE_BOOL}


@pytest.fixture(scope="module")
def pt(tmp_path_factory) -> Path:
    model, meta = load_checkpoint(save_tiny_checkpoint(tmp_path_factory.mktemp("folder")))
    return save_checkpoint(tmp_path_factory.mktemp("pt") / "tiny.pt", model, meta)


@pytest.mark.model
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_triton_repository_parses_and_matches_the_graph(pt, tmp_path, precision):
    repo = tmp_path / "repo"
    assert cli.main(["--model", str(pt), "--format", "triton", "--out", str(repo), "--precision", precision,
                     "--max-shapes", "4x3x512x512", "--no-verify"]) == 0
    folder = repo / "tiny"
    assert sorted(p.name for p in folder.rglob("*")) == ["1", "config.pbtxt", "labels.txt", "model.onnx"]
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(str(folder / "1" / "model.onnx"))
    props = {p.key: p.value for p in graph.metadata_props}
    assert (config.name, config.platform, config.max_batch_size) == ("tiny", "onnxruntime_onnx", 4)
    assert config.HasField("dynamic_batching")
    for entries, values in ((config.input, graph.graph.input), (config.output, graph.graph.output)):
        assert [e.name for e in entries] == [v.name for v in values]
        for entry, value in zip(entries, values):
            tensor = value.type.tensor_type
            assert entry.data_type == TYPES[tensor.elem_type]
            assert list(entry.dims) == [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
    labelled = [e for e in config.output if e.label_filename]
    assert [e.name for e in labelled] == ["scores"] and labelled[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == json.loads(props["class_names"])
    assert (folder / "labels.txt").read_text().splitlines() == load_checkpoint(pt)[1].class_names
    assert {k: json.loads(v.string_value) for k, v in config.parameters.items()} == {
        "mean": json.loads(props["mean"]), "std": json.loads(props["std"])}


def test_triton_needs_an_output_folder(pt, capsys):
    assert cli.main(["--model", str(pt), "--format", "triton", "--no-verify"]) == 2
    assert "--format triton needs --out REPO" in capsys.readouterr().err
    assert cli.main(["--model", str(pt), "--format", "triton", "--out", "repo", "--out-engine", "m.engine"]) == 2
    assert "tensorrt_plan) is not supported" in capsys.readouterr().err
