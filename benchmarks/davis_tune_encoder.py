"""The encoder recipe of the davis preset, chosen on a tuning split of the DAVIS-2016 train sequences only: 25
sequences train, 5 held out (mallard-fly, drift-turn, lucia, hike, rollerblade) are scored; no dev sequence is
read. Trains the Lite0 encoder with the preset's settings plus the given overrides, then prints the held-out val
mAP and CAM baseline mIoU (eval-cam's default thresholds).

Run: .venv/bin/python benchmarks/davis_tune_encoder.py frozen '{"freeze_backbone": true}'
     .venv/bin/python benchmarks/davis_tune_encoder.py full '{"freeze_backbone": false}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from wsvs.runtime.config import load_config
from wsvs.training.cam import EvalCamConfig, evaluate_cam
from wsvs.training.davis_world import DavisWorldConfig, build_davis_world, davis_subset
from wsvs.training.pipeline import PipelineConfig, preset_path
from wsvs.training.train_encoder import train_encoder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HELD_OUT = ("mallard-fly", "drift-turn", "lucia", "hike", "rollerblade")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the run's folder under --out")
    parser.add_argument("overrides", type=json.loads, help="TrainEncoderConfig fields as JSON")
    parser.add_argument("--out", type=Path, default=Path("/tmp/wsvs-davis-tune"))
    args = parser.parse_args()
    train = DATA / "davis2016_train"
    names = tuple(sorted(p.name for p in (train / "Annotations" / "480p").iterdir() if p.name not in HELD_OUT))
    world = args.out / "world"
    if not (world / "world.json").is_file():
        config = DavisWorldConfig(train=davis_subset(train, names, args.out / "train"),
                                  eval=davis_subset(train, HELD_OUT, args.out / "eval"),
                                  classes_table=DATA / "davis2016_classes.tsv", long_side=256, image_step=5,
                                  eval_step=4)
        build_davis_world(config, world)
    recipe = dataclasses.replace(load_config(PipelineConfig, preset_path("davis")).encoder, **args.overrides)
    model = train_encoder(world / "images", args.out / args.name, recipe)
    result = evaluate_cam(model, world / "images", EvalCamConfig())
    print(f"{args.name} {args.overrides}: held-out CAM baseline mIoU {100 * result['miou']:.1f}")
    print(result["table_text"])


if __name__ == "__main__":
    main()
