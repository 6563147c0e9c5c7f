"""`wsvs segment` on hostile inputs, made here in tmp_path: odd sizes, channels and bit depths, crafted headers,
truncated and alien files, broken videos, checkpoints and graphs. Each gives exit 0 with the bad inputs listed
(when something was segmented) or exit 2 with one line naming the file and the problem: never a traceback."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
from PIL import Image

from wsvs.runtime.cli import main
from wsvs.runtime.contract import GraphMetadata
from wsvs.runtime.io import read_label_png
from wsvs.runtime.timing import synthetic_images


def segment(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, list[str]]:
    """Exit code, stdout and the lines left on stderr (tqdm redraws its bar with carriage returns)."""
    code = main(["segment", *map(str, argv)])
    captured = capsys.readouterr()
    lines = [line.rsplit("\r", 1)[-1] for line in captured.err.split("\n")]
    return code, captured.out, [line for line in lines if line.strip()]


def error_line(lines: list[str]) -> str:
    """The one error line of a refused command (the backend line may precede it)."""
    errors = [line for line in lines if line.startswith("wsvs segment: error: ")]
    assert len(errors) == 1, lines
    return errors[0]


def skipped(lines: list[str]) -> dict[str, str]:
    """The inputs listed after "skipped N input(s):", by file name, with their problem."""
    start = next(i for i, line in enumerate(lines) if line.startswith("segment: skipped "))
    assert lines[start] == f"segment: skipped {len(lines) - start - 1} input(s):"
    return {Path(line.strip().split(": ", 1)[0]).name: line.split(": ", 1)[1] for line in lines[start + 1:]}


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares an RGB image of this size and holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to declare another size."""
    at = jpeg.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height and width
    return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4:]


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 17, 9, "yuv420p"
        container.start_encoding()
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def good_image() -> np.ndarray:
    return synthetic_images(1, 60, 80, seed=11)[0]


def test_hostile_images_are_segmented_or_listed(exported, good_image, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = Image.fromarray(good_image)
    rgb.save(folder / "good.png")
    rgb.save(folder / "photo.jpg", quality=95)
    sizes = {"dot": (1, 1), "row": (700, 1), "column": (1, 300), "sliver": (2000, 3)}  # (width, height)
    for name, size in sizes.items():
        Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(folder / f"{name}.png")
    for mode in ("L", "LA", "RGBA", "P"):
        rgb.convert(mode).save(folder / f"mode_{mode}.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).save(folder / "gray16.png")
    jpeg = (folder / "photo.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "truncated.png").write_bytes((folder / "good.png").read_bytes()[:200])
    (folder / "bomb.png").write_bytes(png_header(20000, 20000))  # 400 Mpx: past Pillow's own limit
    (folder / "bomb.jpg").write_bytes(jpeg_declaring(jpeg, 10000, 10000))  # 100 Mpx: over the default cap
    (folder / "hollow.png").write_bytes(png_header(3000, 2000))  # under the cap, but no pixel data
    (folder / "text.jpg").write_text("this is not a picture\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "x.png").mkdir()

    code, out, lines = segment([folder, tmp_path / "missing.jpg", "--model", exported, "--out", tmp_path / "out"],
                               capsys)
    assert code == 0
    assert lines[0].startswith("segment: ort-cpu (ONNX Runtime") and lines[0].endswith(f"{exported}/model.onnx")
    assert not any("Traceback" in line for line in lines)
    problems = skipped(lines)
    assert set(problems) == {"truncated.jpg", "truncated.png", "bomb.png", "bomb.jpg", "hollow.png", "text.jpg",
                             "empty.png", "x.png", "missing.jpg"}
    assert problems["bomb.png"].startswith("declared size is over Pillow's decompression-bomb limit")
    assert problems["bomb.jpg"] == "10000x10000 is 100.0 megapixels, over the cap of 89.5 (--max-pixels)"
    for name in ("truncated.jpg", "truncated.png", "hollow.png", "text.jpg", "empty.png"):
        assert problems[name].startswith("not a readable image"), name
    assert problems["x.png"] == "is a folder, not an image"
    assert problems["missing.jpg"] == "no such image or folder"

    done = {p.stem: read_label_png(p) for p in (tmp_path / "out").glob("*.png")}
    assert "12 label maps" in out and len(done) == 12
    for name, (width, height) in sizes.items():
        assert done[name].shape == (height, width)  # labelled at the input's size, though segmented at 321
    for name in ("good", "photo", "mode_L", "mode_LA", "mode_RGBA", "mode_P", "cmyk", "gray16"):
        assert done[name].shape == (60, 80) and (tmp_path / "out" / f"{name}_overlay.jpg").is_file()
    assert len(np.unique(done["mode_RGBA"])) >= 2
    np.testing.assert_array_equal(done["mode_RGBA"], done["good"])  # alpha dropped, colours kept
    np.testing.assert_array_equal(done["gray16"], done["mode_L"])  # the high byte of 16-bit gray


def test_nothing_segmentable_is_one_line_and_exit_2(exported, good_image, tmp_path, capsys):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    argv = [tmp_path / "text.jpg", tmp_path / "empty.png", "--model", exported, "--out", tmp_path / "out"]
    code, _, lines = segment(argv, capsys)
    assert code == 2
    line = error_line(lines)
    assert line.startswith(f"wsvs segment: error: nothing could be segmented: {tmp_path}/text.jpg: not a readable")
    assert f"; {tmp_path}/empty.png: not a readable image" in line
    assert not (tmp_path / "out").exists()

    # The same in a process of its own where torch cannot be imported: exit 2, one line, no traceback.
    code = ("import sys; sys.modules['torch'] = None\n"
            "from wsvs.runtime.cli import main\n"
            f"sys.exit(main({['segment', *map(str, argv)]!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_line([line.rsplit("\r", 1)[-1] for line in result.stderr.split("\n")]) == line

    Image.fromarray(good_image).save(tmp_path / "good.png")  # 4800 px
    code, _, lines = segment([tmp_path / "good.png", "--model", exported, "--out", tmp_path / "out",
                              "--max-pixels", "4000"], capsys)
    assert code == 2
    assert error_line(lines) == (f"wsvs segment: error: nothing could be segmented: {tmp_path}/good.png: 80x60 is "
                                 "0.0 megapixels, over the cap of 0.0 (--max-pixels)")


def test_hostile_videos_are_segmented_or_listed(exported, tmp_path, capsys):
    frame = np.full((9, 17, 3), 120, np.uint8)
    one = write_video(tmp_path / "one.mp4", [frame])  # one frame of an odd size
    write_video(tmp_path / "zero.mp4", [])
    longer = write_video(tmp_path / "longer.mp4", [frame] * 30)
    (tmp_path / "truncated.mp4").write_bytes(longer.read_bytes()[: longer.stat().st_size // 2])  # index at the end
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    inputs = [one, *(tmp_path / f"{name}.mp4" for name in ("zero", "truncated", "text", "empty"))]
    code, out, lines = segment([*inputs, "--model", exported, "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert lines[0].startswith("segment: ort-cpu (ONNX Runtime")
    assert lines[0].endswith(f"running {exported}/model.encoder.onnx and model.decoder.onnx")
    problems = skipped(lines)
    assert set(problems) == {"zero.mp4", "truncated.mp4", "text.mp4", "empty.mp4"}
    assert problems["zero.mp4"] == "has no video stream"
    assert problems["truncated.mp4"] == "the video stream has no codec parameters (a truncated file?)"
    assert all(problems[name].startswith("not a readable video") for name in ("text.mp4", "empty.mp4"))
    assert "one.mp4: 1 frames" in out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["one"]  # no empty folders for the bad ones
    masks = list((tmp_path / "out" / "one" / "masks").glob("*.png"))
    assert len(masks) == 1 and read_label_png(masks[0]).shape == (9, 17)

    code, _, lines = segment([one, "--model", exported, "--out", tmp_path / "capped", "--max-pixels", "150"], capsys)
    assert code == 2  # 17x9 = 153 pixels a frame: refused before decoding, nothing written
    assert error_line(lines) == (f"wsvs segment: error: nothing could be segmented: {one}: 17x9 is 0.0 megapixels, "
                                 "over the cap of 0.0 (--max-pixels)")
    assert not (tmp_path / "capped").exists()


def bare_checkpoint(exported: Path, folder: Path) -> Path:
    """The exported checkpoint without its graphs (so `segment` runs it in PyTorch), decoder marked trained."""
    folder.mkdir()
    shutil.copy(exported / "model.safetensors", folder)
    meta = json.loads((exported / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "decoder_trained": True}))
    return folder


def test_pytorch_path_segments_a_1x1_image_and_refuses_broken_checkpoints(exported, good_image, tmp_path, capsys):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray(good_image).save(tmp_path / "good.png")
    images = [tmp_path / "dot.png", tmp_path / "good.png"]
    model = bare_checkpoint(exported, tmp_path / "eager")
    code, _, lines = segment([*images, "--model", model, "--out", tmp_path / "out"], capsys)
    assert code == 0 and lines[0].startswith("segment: pytorch-eager (PyTorch ")
    assert read_label_png(tmp_path / "out" / "dot.png").shape == (1, 1)
    assert read_label_png(tmp_path / "out" / "good.png").shape == (60, 80)

    meta = json.loads((model / "model.json").read_text())
    weights = (model / "model.safetensors").read_bytes()
    broken = {
        "corrupt weights": ("model.safetensors", weights[:5000], "model.safetensors: corrupt weights file"),
        "not JSON": ("model.json", "{ not json", "model.json: not valid JSON"),
        "missing keys": ("model.json", json.dumps({k: v for k, v in meta.items() if k != "arch"}),
                         "model.json: malformed checkpoint metadata ('arch')"),
        "wrong tensor shapes": ("model.json", json.dumps({**meta, "arch": {**meta["arch"], "num_classes": 4},
                                                          "class_names": meta["class_names"][:4]}),
                                "model.safetensors: weights do not match the architecture in model.json"),
    }
    for case, (name, content, problem) in broken.items():
        folder = bare_checkpoint(exported, tmp_path / case.replace(" ", "_"))
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        code, _, lines = segment([*images, "--model", folder, "--out", tmp_path / "out"], capsys)
        assert code == 2, case
        assert error_line(lines).startswith(f"wsvs segment: error: {folder}/{problem}"), case


def segmenter_graph(path: Path, rank: int, outputs: tuple[str, ...]) -> Path:
    """A graph with real segmenter metadata but other inputs or outputs: Identity of an input of ``rank``."""
    from onnx import TensorProto, helper

    dims = ["N", 3, "H", "W"][:rank]
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims) for name in outputs]
    nodes = [helper.make_node("Identity", ["images"], [name]) for name in outputs]
    model = helper.make_model(helper.make_graph(nodes, "segmenter", [images], outs),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    props = GraphMetadata(class_names=["ant", "bee"], graph="segmenter", precision="fp32", top_k=2).to_props()
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_broken_graphs_are_refused_in_one_line(exported, good_image, tmp_path, capsys):
    Image.fromarray(good_image).save(tmp_path / "good.png")
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    graph = (exported / "model.onnx").read_bytes()
    (graphs / "truncated.onnx").write_bytes(graph[: len(graph) // 2])
    cases = {
        "truncated.onnx": "ONNX Runtime cannot load the graph",
        segmenter_graph(graphs / "rank3.onnx", 3, ("labels", "scores")).name:
            "the graph does not run on a 1x3x32x32 input",
        segmenter_graph(graphs / "identity.onnx", 4, ("labels",)).name:
            "not the expected graph: outputs labels (1, 3, 32, 32), scores None, expected labels (1, 32, 32), "
            "scores (1, 2)",
    }
    for name, problem in cases.items():
        code, _, lines = segment([tmp_path / "good.png", "--model", graphs / name, "--out", tmp_path / "out"],
                                 capsys)
        assert code == 2, name
        assert error_line(lines).startswith(f"wsvs segment: error: {graphs / name}: {problem}"), name


def test_a_graph_beside_another_checkpoint_is_refused(exported, good_image, tmp_path, capsys):
    Image.fromarray(good_image).save(tmp_path / "good.png")

    def run(model: Path) -> tuple[int, list[str]]:
        code, _, lines = segment([tmp_path / "good.png", "--model", model, "--out", tmp_path / "out"], capsys)
        return code, lines

    def copy(name: str) -> Path:
        return Path(shutil.copytree(exported, tmp_path / name))

    stale = copy("new_weights")  # new weights (a retrained threshold) beside the older export
    meta = json.loads((stale / "model.json").read_text())
    (stale / "model.json").write_text(json.dumps({**meta, "class_threshold": 0.9}))
    code, lines = run(stale)
    assert code == 2
    assert error_line(lines) == (
        f"wsvs segment: error: {stale}/model.onnx: was exported from another checkpoint than the model.safetensors "
        "and model.json beside it (a stale export, or a changed or damaged checkpoint): re-export it (wsvs export "
        f"--model {stale}) or run the checkpoint (--backend pytorch-eager)")

    damaged = copy("damaged")
    (damaged / "model.safetensors").write_bytes((exported / "model.safetensors").read_bytes()[:1000])
    assert run(damaged)[0] == 2 and "was exported from another checkpoint" in error_line(run(damaged)[1])
    (damaged / "model.safetensors").unlink()
    assert error_line(run(damaged)[1]) == f"wsvs segment: error: {damaged}: checkpoint beside model.onnx lacks " \
                                          "model.safetensors"
    not_json = copy("not_json")
    (not_json / "model.json").write_text("{ not json")
    assert error_line(run(not_json)[1]).startswith(f"wsvs segment: error: {not_json}/model.json: not valid JSON")

    older = copy("older")  # exported before graphs recorded their checkpoint
    graph = onnx.load(str(older / "model.onnx"))
    kept = [(p.key, p.value) for p in graph.metadata_props if p.key != "checkpoint_sha256"]
    del graph.metadata_props[:]
    for key, value in kept:
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(older / "model.onnx"))
    assert "records no checkpoint digest (an older export)" in error_line(run(older)[1])

    alone = tmp_path / "alone"  # a graph with no checkpoint beside it: nothing to be stale against
    alone.mkdir()
    for name in ("model.onnx", "model.encoder.onnx", "model.decoder.onnx"):
        shutil.copy(exported / name, alone)
    code, lines = run(alone / "model.onnx")
    assert code == 0 and lines[0].endswith(f"running {alone}/model.onnx")

    # Exporting the new weights again makes the folder run, on the new graph.
    assert main(["export", "--model", str(stale), "--no-verify"]) == 0
    capsys.readouterr()
    code, lines = run(stale)
    assert code == 0 and lines[0].endswith(f"running {stale}/model.onnx")
    props = {p.key: p.value for p in onnx.load(str(stale / "model.onnx")).metadata_props}
    assert float(props["class_threshold"]) == 0.9
