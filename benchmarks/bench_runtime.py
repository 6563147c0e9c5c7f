"""Video segmentation frames/s end to end (decode, encoder and decoder graphs or graph cut, masks and overlay
video written) on ONNX Runtime, with and without the §3.2 superpixel refinement; markdown table on stdout.

Run: .venv/bin/python benchmarks/bench_runtime.py --model DIR [--video PATH] [--frames N] [--long-side S]
With --tiny, DIR gets a randomly initialised width-0.125 model and its graphs first (when it has no model.onnx):
speed does not depend on the weights. The image segmenter per backend vs PyTorch eager is `wsvs bench`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from wsvs.runtime.video_segmenter import VideoSegmenter

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "bikes.mp4"


def tiny_model(folder: Path) -> None:
    """A random width-0.125 checkpoint and its three fp32 graphs in ``folder``."""
    import torch

    from wsvs.export import onnx_export
    from wsvs.runtime.contract import ArchConfig, ModelMetadata, checkpoint_digest
    from wsvs.training.checkpoint import save_checkpoint
    from wsvs.training.models import WSVSModel

    torch.manual_seed(0)
    arch = ArchConfig(num_classes=20, width=0.125, batch_norm=True)
    model = WSVSModel(arch).eval()
    meta = ModelMetadata(class_names=[f"class{i}" for i in range(20)], arch=arch, class_threshold=0.45)
    save_checkpoint(folder, model, meta)
    onnx_export.export_onnx(model, meta, onnx_export.GraphPaths.beside(folder / "model.onnx"), 17, top_k=3,
                            checkpoint_sha256=checkpoint_digest(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--video", type=Path, default=CLIP)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--long-side", type=int, default=320)
    args = parser.parse_args()
    if args.tiny and not (args.model / "model.onnx").is_file():
        tiny_model(args.model)

    print(f"Clip: {args.video.name}, first {args.frames} frames, segmented at long side {args.long_side}\n")
    print("| refine | batch | window | frames | s | frames/s | backend |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for refine, batch, window in (("none", 1, 1), ("none", 8, 1), ("superpixel", 8, 8), ("superpixel", 8, 16)):
        segmenter = VideoSegmenter(args.model, "auto", batch, args.long_side, refine, window)
        with tempfile.TemporaryDirectory() as out:
            summary = segmenter.segment(args.video, Path(out), max_frames=args.frames)
        print(f"| {refine} | {batch} | {window if refine != 'none' else '-'} | {summary['frames']} | "
              f"{summary['seconds']:.1f} | {summary['frames_per_s']:.1f} | {summary['backend']} |")


if __name__ == "__main__":
    main()
