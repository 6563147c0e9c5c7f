"""One-file ``.pt`` checkpoints: written as plain data, read with weights_only=True, refused when they hold code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from test_export_onnx import save_tiny_checkpoint

from wsvs.export import cli
from wsvs.runtime.errors import InputError
from wsvs.training.checkpoint import (
    PT_METADATA,
    PT_WEIGHTS,
    finish_training,
    load_checkpoint,
    save_checkpoint,
    training_folder,
)


class Payload:
    """Unpickling this runs os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("folder"))


def test_pt_holds_plain_data_and_loads_the_same_model(folder, tmp_path):
    model, meta = load_checkpoint(folder)
    pt = finish_training(folder, tmp_path / "model.pt")
    content = torch.load(pt, map_location="cpu", weights_only=True)
    assert sorted(content) == [PT_WEIGHTS, PT_METADATA] and isinstance(content[PT_METADATA], str)
    again, meta_again = load_checkpoint(pt)
    assert meta_again.to_json() == meta.to_json()
    for (name, value), (name_again, value_again) in zip(model.state_dict().items(), again.state_dict().items()):
        assert name == name_again and torch.equal(value, value_again)
    assert training_folder(pt) == tmp_path / "model.train" and training_folder(folder) == folder


@pytest.mark.parametrize("content", ["module", "payload"])
def test_pickled_objects_are_refused_with_no_code_run(folder, tmp_path, capsys, content):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))  # the payload does run when unpickled without weights_only
    assert control.exists()
    control.unlink()
    marker = tmp_path / "marker"
    pt = tmp_path / "model.pt"
    if content == "module":
        torch.save(load_checkpoint(folder)[0], pt)
    else:
        with open(pt, "wb") as file:
            pickle.dump({PT_WEIGHTS: Payload(marker), PT_METADATA: "{}"}, file, protocol=2)
    assert cli.main([str(pt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(pt) in err and "pickled objects" in err and PT_WEIGHTS in err
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_state_dict_alone_says_what_wsvs_needs(folder, tmp_path, capsys):
    pt = tmp_path / "model.pt"
    torch.save(load_checkpoint(folder)[0].state_dict(), pt)
    assert cli.main([str(pt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a wsvs checkpoint" in err and PT_METADATA in err


@pytest.mark.model
def test_export_of_a_pt_writes_verified_graphs_beside_it(folder, tmp_path, capsys):
    """`wsvs-export model.pt` with no other flag: three graphs beside the file, verified against PyTorch."""
    model, meta = load_checkpoint(folder)
    pt = save_checkpoint(tmp_path / "model.pt", model, meta)
    assert cli.main([str(pt)]) == 0
    out = capsys.readouterr().out
    assert "verification passed" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.decoder.onnx", "model.encoder.onnx", "model.onnx",
                                                          "model.pt"]
    # --onnx, the older spelling of --out
    assert cli.main(["--model", str(pt), "--onnx", str(tmp_path / "old" / "m.onnx"), "--no-verify"]) == 0
    assert (tmp_path / "old" / "m.encoder.onnx").is_file()
    # the runtime runs the graphs beside the .pt they came from, and refuses them beside a changed one
    from wsvs.runtime.backends import open_backend

    open_backend(tmp_path / "model.onnx", "segmenter", "ort-cpu")
    meta.class_threshold = 0.9
    save_checkpoint(pt, model, meta)
    with pytest.raises(InputError, match=r"model\.encoder\.onnx: was exported from another checkpoint than the "
                                         r"model\.pt beside it"):
        open_backend(tmp_path / "model.onnx", "encoder", "ort-cpu")


@pytest.mark.model
def test_train_to_pt_resume_export_and_verify(world_dir, tmp_path, capsys):
    """train-encoder --out X.pt (then --resume to one more epoch) -> one file -> wsvs-export X.pt -> verified graphs."""
    from wsvs.runtime.cli import main

    ids = (world_dir / "images" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:16]
    (tmp_path / "split.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "config.yaml").write_text(f"train_split: {tmp_path / 'split.txt'}\n")
    pt = tmp_path / "encoder.pt"
    train = ["train-encoder", "--data", str(world_dir / "images"), "--out", str(pt), "--config",
             str(tmp_path / "config.yaml"), "--width", "0.125", "--batch-norm", "--input-size", "64"]
    assert main([*train, "--epochs", "1"]) == 0
    assert main([*train, "--epochs", "2", "--resume"]) == 0
    history = load_checkpoint(pt)[1].extra["encoder_training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    capsys.readouterr()
    assert cli.main([str(pt)]) == 0 and "verification passed" in capsys.readouterr().out
    assert {"encoder.onnx", "encoder.encoder.onnx", "encoder.decoder.onnx"} <= {p.name for p in tmp_path.iterdir()}
