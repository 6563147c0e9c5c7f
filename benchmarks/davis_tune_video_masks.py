"""§3.2's settings for the davis preset, chosen on half of the training clips and reported on the other half: J of
a `wsvs train --preset davis` run's clips segmented with the preset's segment-videos settings plus the given
overrides, against the clips' DAVIS masks. The tuning half is the clips of every other training sequence in
name order (both halves mix classes); no dev sequence is read.

Run: .venv/bin/python benchmarks/davis_tune_video_masks.py --run runs/real/seed-0 preset '{}'
     .venv/bin/python benchmarks/davis_tune_video_masks.py --run runs/real/seed-0 floor \
         '{"videoseg": {"attention_floor": 0.3}}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from wsvs.runtime.config import load_config
from wsvs.runtime.executor import ExecutorConfig
from wsvs.runtime.io import read_json
from wsvs.training.davis_world import write_clip_truth
from wsvs.training.eval_video import evaluate_videos
from wsvs.training.pipeline import PipelineConfig, preset_path
from wsvs.training.segment_videos import segment_videos


def halves(world: Path) -> tuple[set[str], set[str]]:
    """Clip-id prefixes (``<seq>-<class>``) of the tuning half and of the report half of the training pages."""
    pages = [entry for entries in read_json(world / "web" / "listing.json").values() for entry in entries]
    sequences = sorted({entry["sequence"] for entry in pages})
    tuning = set(sequences[0::2])
    return ({e["id"] for e in pages if e["sequence"] in tuning},
            {e["id"] for e in pages if e["sequence"] not in tuning})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a seed's run folder of wsvs train --preset davis")
    parser.add_argument("name", help="the variant's folder under --out")
    parser.add_argument("overrides", type=json.loads, help="SegmentVideosConfig fields as JSON (videoseg: nested)")
    parser.add_argument("--half", choices=("tuning", "report", "all"), default="tuning",
                        help="which clips to segment: the tuning half (default), the report half, or all")
    parser.add_argument("--out", type=Path, default=Path("/tmp/wsvs-davis-video-masks"))
    args = parser.parse_args()
    overrides = dict(args.overrides)
    config = load_config(PipelineConfig, preset_path("davis")).segment_videos
    videoseg = dataclasses.replace(config.videoseg, **overrides.pop("videoseg", {}))
    config = dataclasses.replace(config, videoseg=videoseg, **overrides)
    tuning, report = halves(args.run / "world")
    pages = {"tuning": tuning, "report": report, "all": tuning | report}[args.half]
    clips = args.out / f"clips-{args.half}"  # the half's clips, linked in the crawl's class/clip layout
    for clip in sorted((args.run / "crawl" / "clips").glob("*/*")):
        if clip.stem.rsplit("_", 1)[0] in pages and not (clips / clip.parent.name / clip.name).exists():
            (clips / clip.parent.name).mkdir(parents=True, exist_ok=True)
            (clips / clip.parent.name / clip.name).symlink_to(clip.resolve())
    masks = args.out / args.name
    segment_videos(clips, masks, config, args.run / "encoder", ExecutorConfig())
    truth = args.out / f"truth-{args.half}"  # every frame of the half's clips, whatever the variant
    if not truth.is_dir():
        write_clip_truth(args.run / "world", args.run / "crawl", masks, truth)
    per_clip = evaluate_videos(masks, truth)["per_video"]

    def mean_j(half: set[str]) -> str:
        values = [row["iou"] for clip, row in per_clip.items() if clip.rsplit("_", 1)[0] in half]
        return f"{np.mean(values):.3f} ({len(values)} clips)" if values else "-"

    print(f"{args.name} {json.dumps(args.overrides)}: J tuning half {mean_j(tuning)}, report half {mean_j(report)}")


if __name__ == "__main__":
    main()
