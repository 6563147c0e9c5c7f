"""The README's figure of real frames: for one frame of each scored evaluation sequence of a `wsvs train --preset
davis` run, the frame, the CAM baseline, the decoder trained on video masks and the adapted model, as overlays.

Run: .venv/bin/python benchmarks/real_figure.py --run runs/real/seed-0 --out docs/figures/real_frames.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from wsvs.runtime.io import overlay, write_image_rgb
from wsvs.training.cam import EvalCamConfig, FrameAttention, cam_segmentation
from wsvs.training.checkpoint import load_checkpoint
from wsvs.training.inference import segment_images
from wsvs.training.voc import VOCDataset

COLUMNS = ("frame", "CAM baseline", "decoder (video masks)", "+ adaptation")


def label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    out[:height + 8, :width + 8] = 0
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a seed's run folder of wsvs train --preset davis")
    parser.add_argument("--out", type=Path, required=True, help="the figure (JPEG or PNG)")
    parser.add_argument("--frame", type=int, default=20, help="frame index shown of each sequence (default 20)")
    args = parser.parse_args()
    data = args.run / "world" / "images"
    val = VOCDataset(data, "val")
    sequences = sorted({image_id.rsplit("_", 1)[0] for image_id in val.ids})
    chosen = [min((i for i, image_id in enumerate(val.ids) if image_id.startswith(f"{seq}_")),
                  key=lambda i: abs(int(val.ids[i].rsplit("_", 1)[1]) - args.frame)) for seq in sequences]
    attention = FrameAttention.load(args.run / "encoder")
    models = [load_checkpoint(args.run / name) for name in ("decoder", "adapt")]
    rows = []
    for i in chosen:
        image = val.image(i)
        probs, maps = attention.scores_and_attention(image[None])
        cam = cam_segmentation(probs[0], maps[0], attention.meta.class_threshold, EvalCamConfig.cam_threshold)
        predicted = [segment_images(model, meta, image[None])[0][0] for model, meta in models]
        tiles = [image] + [overlay(image, labels) for labels in (cam, *predicted)]
        rows.append(np.concatenate([label(t, f"{val.ids[i]}" if k == 0 else COLUMNS[k]) for k, t in
                                    enumerate(tiles)], axis=1))
    write_image_rgb(args.out, np.concatenate(rows, axis=0))
    print(f"wrote {args.out}: {len(rows)} frames x {len(COLUMNS)} columns")


if __name__ == "__main__":
    main()
