"""The Python API (``wsvs.runtime.Segmenter``): one image, a batch, a video and a stream of frames, as numpy arrays,
with the labels the command line writes; and a backend registered in one place reaches doctor, bench and segment."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from wsvs.runtime import Segmenter
from wsvs.runtime.backends import BACKENDS, BackendEntry, OnnxRuntimeBackend, graph_file
from wsvs.runtime.cli import main
from wsvs.runtime.image_segmenter import ImageSegmenter
from wsvs.runtime.io import read_label_png
from wsvs.runtime.timing import synthetic_images
from wsvs.runtime.video_segmenter import VideoSegmenter


@pytest.fixture(scope="module")
def api(exported) -> Segmenter:
    return Segmenter(exported / "model.onnx", "ort-cpu", batch=2)


def test_image_and_batch_give_the_image_segmenters_labels(api, exported, tmp_path):
    images = list(synthetic_images(3, 97, 131, seed=5))
    expected = ImageSegmenter(exported, "ort-cpu").segment(images)
    cv2.imwrite(str(tmp_path / "photo.png"), images[0][..., ::-1])
    one = api(tmp_path / "photo.png")
    np.testing.assert_array_equal(one.labels, expected[0].labels)
    assert one.labels.shape == (97, 131) and one.labels.dtype == np.uint8 and one.scores.shape == (5,)
    assert len(np.unique(one.labels)) >= 2  # not a trivial map
    results = api.batch(images)
    for result, reference in zip(results, expected, strict=True):
        np.testing.assert_array_equal(result.labels, reference.labels)
        np.testing.assert_allclose(result.scores, reference.scores, atol=1e-6)
    overlay = results[1].overlay()
    assert overlay.shape == (97, 131, 3) and overlay.dtype == np.uint8
    assert np.abs(overlay.astype(int) - images[1]).max() > 0  # the labels are drawn
    names = results[1].present()
    assert names and set(names) <= set(api.class_names)
    counts = {api.class_names[i - 1]: np.sum(results[1].labels == i) for i in np.unique(results[1].labels) if i}
    assert names[0] == max(counts, key=counts.get)


def test_video_and_stream_give_the_video_segmenters_masks(api, exported, shared_data, tmp_path):
    clip = shared_data / "videos" / "realshort.mp4"
    VideoSegmenter(exported, "ort-cpu", batch=2).segment(clip, tmp_path / "cli")
    written = [read_label_png(p) for p in sorted((tmp_path / "cli" / "masks").glob("*.png"))]
    results = list(api.video(clip))
    assert len(results) == len(written) == 36
    for result, mask in zip(results, written):
        np.testing.assert_array_equal(result.labels, mask)
        assert result.image.shape[:2] == mask.shape and result.scores.shape == (5,)
    assert len(list(api.video(clip, max_frames=5))) == 5
    frames = [r.image for r in results[:7]]
    streamed = list(api.stream(iter(frames)))  # any iterable of frames: a camera, one's own decoder
    assert [s.labels.tobytes() for s in streamed] == [r.labels.tobytes() for r in results[:7]]


class StandInBackend(OnnxRuntimeBackend):
    """A new backend as a user would add one: its own class (here ONNX Runtime under another name)."""

    def describe(self) -> str:
        return "stand-in (a backend registered in one table row)"


@pytest.fixture
def stand_in() -> Iterator[str]:
    """One row added to BACKENDS, ahead of the others: nothing else is touched."""
    entry = BackendEntry("stand-in", "ONNX graphs run by the stand-in",
                         lambda model, graph: graph_file(model, graph, ".onnx"),
                         lambda model, graph, threads: StandInBackend(graph_file(model, graph, ".onnx"), "ort-cpu",
                                                                      threads),
                         lambda: None)
    table = dict(BACKENDS)
    BACKENDS.clear()
    BACKENDS.update({entry.name: entry, **table})
    try:
        yield entry.name
    finally:
        BACKENDS.clear()
        BACKENDS.update(table)


def test_a_backend_registered_in_one_row_reaches_doctor_bench_and_segment(stand_in, exported, tmp_path, capsys):
    assert main(["doctor", "--model", str(exported)]) == 0
    report = capsys.readouterr().out
    assert "backend stand-in" in report and "tries stand-in, " in report
    assert "model" in report and "backend auto: stand-in (a backend registered" in report

    image = synthetic_images(1, 60, 80, seed=1)[0]
    cv2.imwrite(str(tmp_path / "photo.png"), image[..., ::-1])
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "photo.png"), "--model", str(exported), "--backend", stand_in,
                 "--out", str(out)]) == 0
    assert "segment: stand-in" in capsys.readouterr().err
    np.testing.assert_array_equal(read_label_png(out / "photo.png"),
                                  ImageSegmenter(exported, "ort-cpu").segment([image])[0].labels)

    assert main(["bench", "--model", str(exported), "--backend", f"{stand_in},ort-cpu", "--batch", "1",
                 "--input-size", "64", "--iterations", "2", "--warmup", "1", "--out", str(tmp_path / "bench")]) == 0
    table = capsys.readouterr().out
    assert "| stand-in | 1 |" in table and "| ort-cpu | 1 |" in table


def test_unknown_backend_is_one_line_naming_the_choices(exported, capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's usage error
        main(["segment", "x.jpg", "--model", str(exported), "--backend", "onnx"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    choices = ", ".join(BACKENDS)
    assert error == f"wsvs segment: error: argument --backend: unknown backend 'onnx' (choose auto, {choices})"


def test_the_api_never_imports_torch(exported, tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from wsvs.runtime import Segmenter\n"
            f"result = Segmenter({str(exported / 'model.onnx')!r})(np.zeros((40, 50, 3), np.uint8))\n"
            "assert result.labels.shape == (40, 50)\n"
            "assert not [k for k, v in sys.modules.items() if v is not None and k.split('.')[0] == 'torch']\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(tmp_path))
    assert result.returncode == 0, result.stderr


def test_segment_needs_only_the_model_and_writes_to_a_default_folder(exported, tmp_path, monkeypatch, capsys):
    """`wsvs segment photo.jpg --model model.onnx`, no other flag: the output goes to runs/segment/, and says so."""
    monkeypatch.chdir(tmp_path)
    cv2.imwrite("photo.jpg", synthetic_images(1, 60, 80, seed=2)[0][..., ::-1])
    assert main(["segment", "photo.jpg", "--model", str(exported / "model.onnx")]) == 0
    assert "label maps (VOC palette) and overlays in runs/segment" in capsys.readouterr().out
    assert read_label_png(Path("runs/segment/photo.png")).shape == (60, 80)
    assert Path("runs/segment/photo_overlay.jpg").is_file()
