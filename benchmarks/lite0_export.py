"""Export parity of a Lite0 model on real frames: `wsvs-export` at fp32, fp16 and int8 (calibrated on training
frames), then each graph on ONNX Runtime's CPU provider against the fp32 graph on the evaluation frames, at 321 px
on the longer side: share of pixels with the fp32 label, and mIoU against the DAVIS masks. Markdown on stdout.
The graphs are exported unverified; `wsvs-export` without --no-verify checks them against PyTorch.

Run: .venv/bin/python benchmarks/lite0_export.py --run runs/real/seed-0 [--model adapt] [--calib-images 64]
The graphs are written into a copy of the checkpoint folder under --scratch (default /tmp/wsvs-lite0-export).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from wsvs.export.cli import main as export_main
from wsvs.runtime import Segmenter
from wsvs.runtime.metrics import ConfusionMatrix
from wsvs.training.voc import VOCDataset

PRECISIONS = ("fp32", "fp16", "int8")
LONG_SIDE = 321


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a seed's run folder of wsvs train --preset davis")
    parser.add_argument("--model", default="adapt", help="its checkpoint folder to export (default adapt)")
    parser.add_argument("--calib-images", type=int, default=64, help="training frames to calibrate int8 on")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/wsvs-lite0-export"))
    args = parser.parse_args()
    data = args.run / "world" / "images"
    model = args.scratch / "model"
    shutil.rmtree(args.scratch, ignore_errors=True)
    shutil.copytree(args.run / args.model, model, ignore=shutil.ignore_patterns("train_state.pt", "refused"))
    calib = args.scratch / "calib"  # training frames only: the evaluation frames are what parity is measured on
    calib.mkdir()
    train = VOCDataset(data, "train")
    for image_id in train.ids[:: max(1, len(train) // args.calib_images)][: args.calib_images]:
        (calib / f"{image_id}.jpg").symlink_to((data / "JPEGImages" / f"{image_id}.jpg").resolve())
    for precision in PRECISIONS:  # unverified (--verify): what is measured here is parity on the real frames
        code = export_main([str(model), "--precision", precision, "--calib", str(calib), "--no-verify",
                            "--opt-shapes", f"1x3x{LONG_SIDE}x{LONG_SIDE}"])
        print(f"wsvs-export {precision}: exit {code}")
    val = VOCDataset(data, "val")
    images = [val.image(i) for i in range(len(val))]
    labels = {}
    rows = []
    for precision in PRECISIONS:
        graph = model / ("model.onnx" if precision == "fp32" else f"model.{precision}.onnx")
        segmenter = Segmenter(graph, "ort-cpu", batch=1, long_side=LONG_SIDE)
        labels[precision] = [result.labels for result in segmenter.batch(images)]
        matrix = ConfusionMatrix(len(segmenter.class_names) + 1)
        for predicted, i in zip(labels[precision], range(len(val))):
            matrix.update(predicted, val.mask(i))
        agreement = np.mean([np.mean(a == b) for a, b in zip(labels[precision], labels["fp32"])])
        rows.append(f"| {precision} | {graph.stat().st_size / 1e6:.1f} | {100 * agreement:.2f} | "
                    f"{100 * matrix.miou():.1f} |")
    print(f"\n{len(val)} evaluation frames at {LONG_SIDE} px on the longer side, ONNX Runtime CPU\n")
    print("| precision | graph MB | pixels with the fp32 label (%) | mIoU |\n|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
