"""EfficientNet-Lite0's output stride, 32 (as trained) against 16 (last stage dilated), by how well the zero-shot
ImageNet CAM of a sequence's class (``wsvs.training.imagenet_classes.imagenet_cam``) covers the DAVIS mask: IoU of
CAM > 0.5 per frame, every 10th frame, frames at 320x180, on the single-class DAVIS-2016 train sequences whose class
ImageNet has (the tuning split: no dev sequence is read). Markdown rows on stdout.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lite0_stride.py [--data ../shared/data/davis2016_train]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsvs.training.efficientnet_lite import pretrained_lite0
from wsvs.training.imagenet_classes import imagenet_cam

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016_train"
SEQUENCES = {"boat": "boat", "bus": "bus", "car-turn": "car", "dog-agility": "dog", "drift-turn": "car",
             "flamingo": "bird", "mallard-fly": "bird", "mallard-water": "bird", "train": "train"}
STRIDES = (32, 16)


def sequence_iou(data: Path, sequence: str, name: str, models: dict[int, torch.nn.Module], step: int) -> dict:
    """Mean IoU per stride over every ``step``-th frame of one sequence."""
    masks = sorted((data / "Annotations" / "480p" / sequence).glob("*.png"))
    with av.open(str(data / "videos" / f"{sequence}.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    ious: dict[int, list[float]] = {stride: [] for stride in models}
    for i in range(0, min(len(frames), len(masks)), step):
        truth = np.asarray(Image.open(masks[i]).convert("L")) > 127
        small = np.asarray(Image.fromarray(frames[i]).resize((320, 180), Image.BILINEAR), np.float32)
        x = torch.from_numpy((small - 127) / 128).permute(2, 0, 1)[None]
        for stride, model in models.items():
            with torch.no_grad():
                cam = F.interpolate(imagenet_cam(model, x, name)[None], size=truth.shape, mode="bilinear",
                                    align_corners=False)[0, 0].numpy()
            predicted = cam > 0.5
            ious[stride].append((predicted & truth).sum() / max((predicted | truth).sum(), 1))
    return {stride: float(np.mean(values)) for stride, values in ious.items()} | {"frames": len(ious[STRIDES[0]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--step", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {stride: pretrained_lite0(stride).eval() for stride in STRIDES}
    print("| sequence | class | frames | IoU stride 32 | IoU stride 16 |\n|---|---|---:|---:|---:|")
    rows = []
    for sequence, name in SEQUENCES.items():
        row = sequence_iou(args.data, sequence, name, models, args.step)
        rows.append(row)
        print(f"| {sequence} | {name} | {row['frames']} | {row[32]:.3f} | {row[16]:.3f} |", flush=True)
    print(f"| mean | | | {np.mean([r[32] for r in rows]):.3f} | {np.mean([r[16] for r in rows]):.3f} |")


if __name__ == "__main__":
    main()
