"""The torch-free runtime: image and video segmentation from exported graphs on ONNX Runtime, backend selection,
TensorRT failure modes, and `wsvs bench`."""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from wsvs.export import verify
from wsvs.runtime import bench, cuda_api
from wsvs.runtime.backends import check_engine_sidecar, open_backend, select_backend
from wsvs.runtime.contract import GraphMetadata
from wsvs.runtime.errors import InputError
from wsvs.runtime.image_segmenter import ImageSegmenter, SizeLimits, restore_size, segment_files, working_size
from wsvs.runtime.io import read_label_png, write_json
from wsvs.runtime.preprocess import normalise, resize_rgb
from wsvs.runtime.timing import synthetic_images
from wsvs.runtime.video_segmenter import VideoSegmenter
from wsvs.training.checkpoint import load_checkpoint

TOP_K = 3  # the top-k the `exported` fixture exports with


@pytest.fixture(scope="module")
def segmenter(exported) -> ImageSegmenter:
    return ImageSegmenter(exported, "ort-cpu", batch=2)


def reference_labels(folder: Path, images: np.ndarray) -> np.ndarray:
    model, meta = load_checkpoint(folder)
    x = torch.from_numpy(normalise(images, meta.mean, meta.std))
    return verify.reference_segmentation(model, meta, x, TOP_K)[3].numpy()


def test_image_segmenter_matches_pytorch_at_working_sizes_and_batches(exported, segmenter):
    """Images go through the graph at their working size (long side = the model's input size, 321 here) and
    come back at their own size, labelled as PyTorch labels the resized image."""
    odd = synthetic_images(3, 97, 131, seed=3)  # three of one size: a batch of 2, then 1
    small = synthetic_images(1, 64, 80, seed=4)
    results = segmenter.segment([odd[0], small[0], odd[1], odd[2]])
    assert segmenter.long_side == 321
    assert working_size(97, 131, 321, segmenter.limits) == (238, 321)
    assert working_size(64, 80, 321, segmenter.limits) == (257, 321)  # odd: ceil-mode pooling, resizes
    expected = []
    for images in (odd, small):
        size = working_size(*images.shape[1:3], 321, segmenter.limits)
        resized = np.stack([resize_rgb(image, size) for image in images])
        expected += [restore_size(labels, images.shape[1:3]) for labels in reference_labels(exported, resized)]
    for reference, result in zip(expected, [results[0], results[2], results[3], results[1]]):
        assert result.labels.shape == reference.shape and result.labels.dtype == np.uint8
        assert len(np.unique(reference)) >= 3  # background and several classes: not a trivial map
        assert np.mean(result.labels == reference) >= 0.999
    assert results[0].scores.shape == (5,)


def test_long_side_resizes_and_restores_size(segmenter):
    image = synthetic_images(1, 90, 150, seed=6)[0]
    resized = ImageSegmenter(segmenter.backend.path, "ort-cpu", long_side=75).segment([image])[0].labels
    small = resize_rgb(image, (45, 75))
    direct = segmenter.backend.run(normalise(small[None], segmenter.metadata.mean, segmenter.metadata.std))
    assert resized.shape == (90, 150)
    np.testing.assert_array_equal(cv2.resize(direct["labels"][0].astype(np.uint8), (150, 90),
                                             interpolation=cv2.INTER_NEAREST), resized)
    with pytest.raises(InputError, match=r"--long-side 5000 is outside the sizes this graph accepts \(32\.\.4096\)"):
        ImageSegmenter(segmenter.backend.path, "ort-cpu", long_side=5000)


def test_working_size_stays_within_the_limits():
    profile = SizeLimits(128, 128, 512, 512)  # an engine's optimisation profile, wsvs export's default
    assert working_size(1, 1, 321, profile) == (321, 321)
    assert working_size(1, 700, 321, profile) == (128, 321)  # stretched to the profile's minimum side
    assert working_size(9000, 9000, 512, profile) == (512, 512)
    assert working_size(3000, 20, 321, SizeLimits()) == (321, 32)
    assert profile.long_side(None, 1000, None) == 512 and profile.long_side(None, 64, None) == 128
    with pytest.raises(InputError, match=r"--long-side 100 is outside the sizes this graph accepts \(128\.\.512\)"):
        profile.long_side(100, 321, None)


def test_segment_files_reads_gray_rgba_and_16_bit(exported, tmp_path):
    rgb = synthetic_images(1, 72, 88, seed=8)[0]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp_path / "rgb.png"), bgr)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([bgr, np.full(gray.shape, 128, np.uint8)]))
    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)
    out = tmp_path / "out"
    report = segment_files(ImageSegmenter(exported, "ort-cpu", batch=3), [tmp_path], out)
    assert [p.name for p in report.written] == ["deep.png", "gray.png", "rgb.png", "rgba.png"] and not report.failed
    labels = {p.stem: read_label_png(p) for p in report.written}
    assert len(np.unique(labels["rgb"])) >= 2
    np.testing.assert_array_equal(labels["rgba"], labels["rgb"])
    np.testing.assert_array_equal(labels["deep"], labels["rgb"])
    gray_alone = ImageSegmenter(exported, "ort-cpu").segment([cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)])[0].labels
    np.testing.assert_array_equal(labels["gray"], gray_alone)
    assert all((out / f"{name}_overlay.jpg").is_file() for name in labels)


def test_auto_selects_onnxruntime_cpu_without_tensorrt_or_cuda_and_says_why(exported, monkeypatch):
    import onnxruntime

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what a machine without TensorRT and CUDA has
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    backend = select_backend("auto", exported / "model.onnx")
    assert backend.name == "ort-cpu"
    assert backend.selection.startswith("backend auto: ort-cpu (ONNX Runtime")
    assert "tensorrt unavailable" in backend.selection and "ort-cuda unavailable" in backend.selection
    with pytest.raises(InputError, match="unknown backend 'onnx'"):
        select_backend("onnx", exported)


def test_tensorrt_backend_fails_with_one_clear_line(exported, tmp_path, monkeypatch):
    """Without TensorRT (forced: sys.modules holds None); the faults of an installed TensorRT are injected in
    tests/test_gpu_environment.py."""
    engine = tmp_path / "model.engine"
    with pytest.raises(InputError, match="TensorRT engine not found"):
        open_backend(tmp_path, "segmenter", "tensorrt")
    engine.write_bytes(b"not an engine")
    write_json(tmp_path / "model.engine.json", {"tensorrt_version": "10.13.0", "gpu": "NVIDIA H100"})
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(InputError, match=r"^TensorRT is not installed") as caught:
        open_backend(tmp_path, "segmenter", "tensorrt")
    assert "\n" not in str(caught.value)


def test_engine_sidecar_must_match_this_tensorrt_and_gpu(tmp_path):
    engine = tmp_path / "model.engine"
    sidecar = {"tensorrt_version": "10.13.0", "gpu": "NVIDIA H100 80GB HBM3"}
    check_engine_sidecar(engine, sidecar, "10.13.0", "NVIDIA H100 80GB HBM3")
    with pytest.raises(InputError, match=r"engine built with TensorRT 10.13.0, this is TensorRT 11.0.0"):
        check_engine_sidecar(engine, sidecar, "11.0.0", "NVIDIA H100 80GB HBM3")
    with pytest.raises(InputError, match=r"engine built for NVIDIA H100 80GB HBM3, this GPU is NVIDIA A10"):
        check_engine_sidecar(engine, sidecar, "10.13.0", "NVIDIA A10")



def test_cuda_helpers_say_what_failed_in_one_line():
    """cuda_api's errors: one line, an InputError for the command lines and a RuntimeError for library callers."""

    class Status(enum.IntEnum):
        SUCCESS = 0
        ERROR_OUT_OF_MEMORY = 2

    assert cuda_api.check((Status.SUCCESS,)) is None
    assert cuda_api.check((Status.SUCCESS, 7)) == 7
    assert cuda_api.check((Status.SUCCESS, 7, 8)) == (7, 8)
    with pytest.raises(cuda_api.CudaError, match=r"^CUDA call failed: ERROR_OUT_OF_MEMORY$") as caught:
        cuda_api.check((Status.ERROR_OUT_OF_MEMORY, None))
    assert isinstance(caught.value, InputError) and isinstance(caught.value, RuntimeError)
    if cuda_api.is_available():
        return  # a GPU is present: the missing-GPU path cannot be exercised
    for call in (cuda_api.device_name, cuda_api.open_device):
        with pytest.raises(cuda_api.CudaError) as caught:
            call()
        assert "\n" not in str(caught.value)

def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_video_segmenter_matches_image_segmenter_per_frame(exported, segmenter, shared_data, tmp_path):
    clip = shared_data / "videos" / "realshort.mp4"  # 320x240, 36 frames
    summary = VideoSegmenter(exported, "ort-cpu", batch=4, long_side=160).segment(clip, tmp_path, max_frames=10)
    assert summary["frames"] == 10 and summary["corrupt_packets"] == 0
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 10
    assert len(decoded_frames(tmp_path / "overlay.mp4")) == 10
    assert json.loads((tmp_path / "summary.json").read_text())["frames"] == 10
    # The encoder + decoder graphs give the end-to-end graph's labels on the same resized frames.
    frames = decoded_frames(clip)[:10]
    expected = [r.labels for r in ImageSegmenter(exported, "ort-cpu", batch=4, long_side=160).segment(frames)]
    got = np.stack([read_label_png(p) for p in masks])
    assert got.shape == (10, 240, 320) and len(np.unique(got)) >= 2
    assert np.mean(got == np.stack(expected)) >= 0.999


def test_video_refinement_and_a_truncated_file(exported, shared_data, tmp_path):
    clip = shared_data / "videos" / "realshort.mp4"
    stream_copy = tmp_path / "realshort.ts"  # MPEG-TS keeps no index at the end: a cut file still plays
    with av.open(str(clip)) as source, av.open(str(stream_copy), "w", format="mpegts") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    truncated = tmp_path / "truncated.ts"
    truncated.write_bytes(stream_copy.read_bytes()[: stream_copy.stat().st_size // 3])

    segmenter = VideoSegmenter(exported, "ort-cpu", batch=4, long_side=160, refine="superpixel", window=4)
    summary = segmenter.segment(truncated, tmp_path / "out")
    assert 3 <= summary["frames"] < 36
    masks = np.stack([read_label_png(p) for p in sorted((tmp_path / "out" / "masks").glob("*.png"))])
    assert len(masks) == summary["frames"] == len(decoded_frames(tmp_path / "out" / "overlay.mp4"))
    # Graph-cut masks: one class per window, foreground on part of each frame, not all or nothing.
    assert len(np.unique(masks)) == 2 and 0.02 < np.mean(masks > 0) < 0.98

    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(InputError, match=r"junk\.mp4: not a readable video"):
        segmenter.segment(tmp_path / "junk.mp4", tmp_path / "junk")


def test_bench_times_backends_against_pytorch(exported, tmp_path):
    config = bench.BenchConfig(backends=("pytorch-eager", "ort-cpu"), batches=(1, 2), size=64, iterations=2,
                               warmup=1)
    results = bench.benchmark(exported, config)
    rows = {(r["backend"], r["batch"]): r for r in results["results"]}
    assert set(rows) == {("pytorch-eager", 1), ("ort-cpu", 1), ("pytorch-eager", 2), ("ort-cpu", 2)}
    for (_, batch), row in rows.items():
        assert row["labels_equal_to_first"] >= 0.999  # ONNX Runtime labels PyTorch's pixels the same
        assert 0 < row["p50_ms"] <= row["p95_ms"]
        assert row["images_per_s"] > 0
        assert row["vs_eager"] == pytest.approx(row["images_per_s"] / rows[("pytorch-eager", batch)]["images_per_s"])
    paths = bench.write_results(results, tmp_path)
    assert [p.suffix for p in paths] == [".json", ".md", ".png"] and all(p.stat().st_size > 0 for p in paths)
    assert paths[0].name.startswith("runtime_") and "_ort" in paths[0].name
    assert "| ort-cpu | 2 |" in paths[1].read_text()
    with pytest.raises(InputError, match="TensorRT engine not found"):
        bench.benchmark(exported, bench.BenchConfig(backends=("tensorrt",), iterations=1))


def stand_in_segmenter(path: Path) -> Path:
    """A segmenter graph made with onnx.helper, so without torch: real graph metadata, and for labels the image's
    channel maximum cast to int32 (enough to time a backend on)."""
    import onnx
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])
    labels = helper.make_tensor_value_info("labels", TensorProto.INT32, ["N", "H", "W"])
    nodes = [helper.make_node("ReduceMax", ["images"], ["peak"], axes=[1], keepdims=0),
             helper.make_node("Cast", ["peak"], ["labels"], to=TensorProto.INT32)]
    model = helper.make_model(helper.make_graph(nodes, "segmenter", [images], [labels]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    props = GraphMetadata(class_names=["ant", "bee"], graph="segmenter", precision="fp32", top_k=2).to_props()
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_bench_times_onnx_backends_without_torch(tmp_path):
    """`wsvs bench --backend ort-cpu` where torch cannot be imported: the rows of ONNX Runtime, no PyTorch column."""
    model, out = stand_in_segmenter(tmp_path / "m.onnx"), tmp_path / "out"
    argv = ["bench", "--model", str(model), "--backend", "ort-cpu", "--batch", "1,2", "--input-size", "32",
            "--iterations", "2", "--warmup", "1", "--out", str(out)]
    code = ("import sys; sys.modules['torch'] = None\n"
            "from wsvs.runtime.cli import main\n"
            f"code = main({argv!r})\n"
            "assert not [k for k, v in sys.modules.items() if v is not None and k.split('.')[0] == 'torch']\n"
            "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".md", ".png"]
    table = next(out.glob("*.md")).read_text()
    assert "| ort-cpu | 2 |" in table and "pytorch" not in table
    assert "torch" not in json.loads(next(out.glob("*.json")).read_text())["versions"]


@pytest.mark.gpu
def test_gpu_backends_match_onnxruntime_cpu(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no ONNX Runtime CUDA provider here (needs onnxruntime-gpu and an NVIDIA GPU)")
    images = synthetic_images(2, 97, 131, seed=3)
    cpu = ImageSegmenter(exported, "ort-cpu").segment(list(images))
    gpu = ImageSegmenter(exported, "ort-cuda").segment(list(images))
    for a, b in zip(cpu, gpu):
        assert np.mean(a.labels == b.labels) >= 0.999


@pytest.mark.gpu
def test_tensorrt_engines_match_onnxruntime_cpu(exported, tmp_path):
    """Engines built by `wsvs export --out-engine` (verified there against PyTorch) run on the runtime's TensorRT
    backend, for images and 320x180 video frames, with the labels ONNX Runtime's CPU provider gives."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("TensorRT is not installed (pip install 'wsvs[gpu-cu12]' or 'wsvs[gpu-cu13]')")
    if not cuda_api.is_available():
        pytest.skip("no NVIDIA GPU / CUDA driver")
    from wsvs.export import cli

    engine = tmp_path / "model.engine"
    assert cli.main(["--model", str(exported), "--out", str(tmp_path / "model.onnx"), "--out-engine", str(engine)]) == 0
    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    assert sidecar["profile"] == {"min": [1, 3, 32, 32], "opt": sidecar["profile"]["opt"], "max": [8, 3, 1024, 1024]}
    images = list(synthetic_images(2, 97, 131, seed=3)) + list(synthetic_images(4, 180, 320, seed=4))
    cpu = ImageSegmenter(exported, "ort-cpu").segment(images)
    gpu = ImageSegmenter(tmp_path, "tensorrt").segment(images)
    for a, b in zip(cpu, gpu):
        assert np.mean(a.labels == b.labels) >= 0.999


def test_segment_cli_runs_images_and_videos_on_the_runtime(exported, segmenter, shared_data, tmp_path, capsys,
                                                         monkeypatch):
    import onnxruntime

    from wsvs.runtime.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # auto must pick ONNX Runtime's CPU provider, also on a GPU
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    images = synthetic_images(2, 97, 131, seed=5)
    for i, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), image[..., ::-1])
    clip = tmp_path / "clip.mp4"
    clip.write_bytes((shared_data / "videos" / "realshort.mp4").read_bytes())
    inputs = [str(tmp_path / "im0.png"), str(tmp_path / "im1.png"), str(clip)]
    assert main(["segment", *inputs, "--model", str(exported), "--out", str(tmp_path / "out"), "--batch", "2"]) == 0
    assert "backend auto: ort-cpu (ONNX Runtime" in capsys.readouterr().err  # the export is there: ONNX Runtime
    expected = [r.labels for r in segmenter.segment(list(images))]
    for i in range(2):
        np.testing.assert_array_equal(read_label_png(tmp_path / "out" / f"im{i}.png"), expected[i])
    video_summary = json.loads((tmp_path / "out" / "clip" / "summary.json").read_text())
    assert video_summary["frames"] == 36 == len(list((tmp_path / "out" / "clip" / "masks").glob("*.png")))

    # Without an export, auto falls back to PyTorch and says why; images and videos alike run on it.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((exported / "model.safetensors").read_bytes())
    meta = json.loads((exported / "model.json").read_text())
    (bare / "model.json").write_text(json.dumps({**meta, "decoder_trained": True}))
    assert main(["segment", *inputs, "--model", str(bare), "--out", str(tmp_path / "eager")]) == 0
    printed = capsys.readouterr().err
    assert "backend auto: pytorch-eager (PyTorch" in printed and "ort-cpu unavailable (no model.onnx)" in printed
    eager_labels = read_label_png(tmp_path / "eager" / "im0.png")
    assert np.mean(eager_labels == expected[0]) > 0.99  # the exported graph labels PyTorch's pixels the same
    assert len(list((tmp_path / "eager" / "clip" / "masks").glob("*.png"))) == 36
