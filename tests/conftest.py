"""Shared fixtures: the real data folder beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Fixtures that train a model or export one: a test using any of them depends on the CPU's float rounding and
# thread count, so it is marked `model` and CI runs it again under PyTorch's AVX2 kernels on one thread
# (`make test-avx2`).
MODEL_FIXTURES = {"encoder_dir", "video_masks", "decoder_dir", "table1", "checkpoint", "loaded",
                  "fp32_graphs", "low_precision_graphs", "trained", "exported", "segmenter"}


def pytest_report_header() -> str:
    """Which kernels PyTorch runs (AVX512 / AVX2, from the CPU or ATEN_CPU_CAPABILITY) and on how many threads."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return f"torch {torch.__version__}: {capability} kernels, {torch.get_num_threads()} threads"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if MODEL_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.model)
        if "world_dir" in fixtures:  # with pytest-xdist (make test-avx2): one process builds and trains the world
            item.add_marker(pytest.mark.xdist_group("synthetic_world"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: skipped on a user's clone that lacks it, a failure in CI where it must be present."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing in CI")
        pytest.skip(f"real data folder {SHARED_DATA} not present (it sits beside the repo in CI)")
    return SHARED_DATA


# A small world and an encoder trained on it, shared by every test that needs real attention.
TEST_WORLD = {
    "classes": ("ant", "bee", "cat"),
    "image_size": 128,  # at 96 px the part is a few pixels across and one class stays at chance (RESULTS.md)
    "train_images": 600,
    "val_images": 60,
    "videos_per_class": 3,
    "misleading_per_class": 1,
    "video_frames": (24, 30),
}


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wsvs.training.demo_world import WorldConfig, generate_world

    return generate_world(WorldConfig(**TEST_WORLD), tmp_path_factory.mktemp("world") / "world")


@pytest.fixture(scope="session")
def encoder_dir(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo preset's encoder recipe, so the tests check what the demo ships. Its 12 epochs matter here: after 8
    the encoder classified val images well but, with PyTorch's AVX2 kernels, scored one relevant video far below
    the crawl's threshold (not so with AVX-512 kernels); after 12 it scores every relevant video high under both."""
    from wsvs.runtime.config import load_config
    from wsvs.training.pipeline import PipelineConfig, preset_path
    from wsvs.training.train_encoder import train_encoder

    recipe = load_config(PipelineConfig, preset_path("demo")).encoder
    return train_encoder(world_dir / "images", tmp_path_factory.mktemp("encoder"), recipe)


@pytest.fixture(scope="session")
def video_masks(world_dir: Path, encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`wsvs segment-videos` masks of every web video of the small world."""
    from wsvs.runtime.cli import main

    out = tmp_path_factory.mktemp("video_masks")
    assert main(["segment-videos", "--videos", str(world_dir / "web"), "--model", str(encoder_dir),
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def decoder_dir(world_dir: Path, encoder_dir: Path, video_masks: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full checkpoint: the encoder and a decoder trained on the video masks (§3.3)."""
    from wsvs.runtime.cli import main

    out = tmp_path_factory.mktemp("decoder")
    assert main(["train-decoder", "--model", str(encoder_dir), "--videos", str(world_dir / "web"),
                 "--masks", str(video_masks), "--out", str(out), "--epochs", "6"]) == 0
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint (width 0.125, random encoder, 5 classes) with its three fp32 graphs beside it, exported
    with top-k 3."""
    from test_export_onnx import save_tiny_checkpoint

    from wsvs.export import onnx_export
    from wsvs.runtime.contract import checkpoint_digest
    from wsvs.training.checkpoint import load_checkpoint

    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("model"))
    model, meta = load_checkpoint(folder)
    onnx_export.export_onnx(model, meta, onnx_export.GraphPaths.beside(folder / "model.onnx"), 17, 3,
                            checkpoint_digest(folder))
    return folder
