"""§3.2 on real video: J of a `wsvs train --preset davis` run's video masks (attention, appearance and motion)
against the DAVIS masks of the clips they were cut from (the run's video_truth/), beside the same graph cut
without attention (motion and appearance alone) on the same clips at the same size. Markdown on stdout.

Run: .venv/bin/python benchmarks/real_video_j.py --run runs/real/seed-0 [--out /tmp/wsvs-no-attention]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wsvs.runtime.config import load_config
from wsvs.runtime.executor import ExecutorConfig
from wsvs.training.eval_video import evaluate_videos
from wsvs.training.pipeline import PipelineConfig, preset_path
from wsvs.training.segment_videos import segment_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a seed's run folder of wsvs train --preset davis")
    parser.add_argument("--out", type=Path, default=Path("/tmp/wsvs-no-attention"), help="masks without attention")
    args = parser.parse_args()
    config = load_config(PipelineConfig, preset_path("davis")).segment_videos
    segment_videos(args.run / "crawl" / "clips", args.out, config, None, ExecutorConfig())
    truth = args.run / "video_truth"
    with_attention = evaluate_videos(args.run / "segment_videos", truth)["per_video"]
    without = evaluate_videos(args.out, truth)["per_video"]
    print("| clip | class | frames | J, attention + appearance + motion | J, appearance + motion |")
    print("|---|---|---:|---:|---:|")
    for clip, row in with_attention.items():
        print(f"| {clip} | {row['class']} | {row['frames']} | {row['iou']:.3f} | {without[clip]['iou']:.3f} |")
    print(f"| **mean ({len(with_attention)})** | | {sum(r['frames'] for r in with_attention.values())} | "
          f"**{np.mean([r['iou'] for r in with_attention.values()]):.3f}** | "
          f"{np.mean([r['iou'] for r in without.values()]):.3f} |")


if __name__ == "__main__":
    main()
