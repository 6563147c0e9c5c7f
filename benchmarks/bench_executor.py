"""segment-videos on 1 and 2 workers, local processes and Ray tasks, on the same paper-like clips.

Clips: 4 s windows (the paper keeps +-2 s around each key-frame) cut from the real videos in ../shared/data/videos,
segmented with --attention none (every frame relevant: the graph cut's work with no encoder). Ray runs a local
instance on this machine (2 CPUs, 1 per task); its start-up is timed apart from the runs. The four runs go twice,
the second round in reverse order (the machine is shared: the spread shows the noise); each run starts afresh.

    OMP_NUM_THREADS=1 flock /tmp/wsvs-heavy.lock nice -n 19 .venv/bin/python benchmarks/bench_executor.py \\
        --out runs/bench-executor
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from wsvs.runtime.executor import ExecutorConfig
from wsvs.runtime.io import read_json
from wsvs.runtime.keyframes import cut_clip
from wsvs.runtime.video_masks import SegmentVideosConfig
from wsvs.training.segment_videos import segment_videos

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
CLIPS = {"bikes": (0.0, 4.0), "cockatoo": (1.0, 5.0), "bigbuckbunny": (0.5, 4.5), "carphone_pristine": (0.0, 4.0)}
RUNS = (("local", 1), ("local", 2), ("ray", 1), ("ray", 2))


def cut_clips(folder: Path) -> dict[str, int]:
    """The clips as <folder>/clip/<name>.mp4; frames per clip."""
    return {name: cut_clip(VIDEOS / f"{name}.mp4", start, end, folder / "clip" / f"{name}.mp4")
            for name, (start, end) in CLIPS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    frames = cut_clips(args.out / "videos")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on 127.0.0.1, as in the tests
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token written to ~/.ray for a throw-away local instance
    import ray

    tic = time.perf_counter()
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - tic
    runs: dict[str, dict] = {}
    for round_index, order in enumerate((RUNS, RUNS[::-1])):
        for kind, workers in order:
            name = f"{kind}-{workers}"
            out = args.out / f"round{round_index}" / name
            tic = time.perf_counter()
            segment_videos(args.out / "videos", out, SegmentVideosConfig(), None, ExecutorConfig(kind, workers))
            wall = time.perf_counter() - tic
            run = runs.setdefault(name, {"wall_s": [], "per_video_s": []})
            run["wall_s"].append(round(wall, 2))
            run["per_video_s"].append({clip: read_json(out / f"{clip}.json")["timings_s"]["total"] for clip in CLIPS})
            run["frames_per_s"] = round(sum(frames.values()) / min(run["wall_s"]), 2)  # the better round
            print(f"{name}: {wall:.1f} s, {sum(frames.values()) / wall:.2f} frames/s", flush=True)
    ray.shutdown()
    masks = {run: {p.relative_to(run): p.read_bytes() for p in run.rglob("*.png")} for run in args.out.glob("round*/*")}
    report = {"frames": frames, "ray_start_s": round(ray_start_s, 2), "runs": runs,
              "masks_identical": all(masks[run] == masks[args.out / "round0" / "local-1"] for run in masks),
              "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
              "versions": {"python": platform.python_version(), "ray": ray.__version__},
              "load_average": os.getloadavg()}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
