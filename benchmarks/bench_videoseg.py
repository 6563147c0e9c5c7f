"""Video segmentation speed: the numpy path and the compiled path side by side, per stage and end to end.

    flock /tmp/wsvs-heavy.lock nice -n 19 python benchmarks/bench_videoseg.py

Input: the first 20 frames of DAVIS-2016 blackswan (854x480) from ../shared/data, segmented at the default work
size (longer side 480: 480x270) with the default VideoSegConfig, once with ``compiled=False`` (the numpy
reference loops) and once with ``compiled=True``, with a box attention and without attention. Each figure is the
median of ``--repeats`` runs after a warm-up (which also compiles or loads the numba cache). Prints markdown
tables: stages in ms per frame, superpixels per frame, pooling throughput against this machine's copy rate.

``--baseline DIR``: also time an older checkout's video path in the same run (DIR holds its ``runtime/``, e.g.
``git archive <commit> runtime cuda_kernels | tar -x -C DIR``), in a child process that imports it as wsvs.runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import numba
import numpy as np

from wsvs.runtime.io import read_image_rgb
from wsvs.runtime.pooling import superpixel_pool
from wsvs.runtime.superpixels import lab_superpixels, rgb_to_lab
from wsvs.runtime.timing import time_calls
from wsvs.runtime.videoseg import VideoSegConfig, segment_frames

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016_dev"
STAGES = ("resize", "superpixels", "flow", "motion", "pooling", "gmm", "edges", "graphcut")
PATHS = {"numpy": False, "compiled": True}


def load_frames(count: int) -> np.ndarray:
    paths = sorted((DAVIS / "JPEGImages" / "480p" / "blackswan").glob("*.jpg"))[:count]
    if len(paths) < count:
        sys.exit(f"{DAVIS}: fewer than {count} blackswan frames")
    return np.stack([read_image_rgb(p) for p in paths])


def box_attention(frames: np.ndarray) -> np.ndarray:
    """A box where the swan is, as the encoder's attention would mark it."""
    attention = np.zeros(frames.shape[:3], dtype=np.float32)
    attention[:, 150:350, 250:600] = 0.9
    return attention


def end_to_end(frames: np.ndarray, attention: np.ndarray | None, config: VideoSegConfig, repeats: int) -> dict:
    """Median seconds per frame of each stage and of the whole call, over ``repeats`` runs after a warm-up."""
    segment_frames(frames, attention, config)
    totals, stages = [], {stage: [] for stage in STAGES}
    for _ in range(repeats):
        start = time.perf_counter()
        _, info = segment_frames(frames, attention, config)
        totals.append(time.perf_counter() - start)
        for stage in STAGES:
            stages[stage].append(info["timings_s"].get(stage, 0.0))
    per_frame = {stage: float(np.median(s)) / len(frames) for stage, s in stages.items()}
    per_frame["total"] = float(np.median(totals)) / len(frames)
    return per_frame


BASELINE_CHILD = """
import json, sys, time
import numpy as np
from wsvs.runtime.videoseg import VideoSegConfig, segment_frames
frames = np.load(sys.argv[1])
attention = np.load(sys.argv[2])
result = {}
for label, maps in (("attention", attention), ("no attention", None)):
    segment_frames(frames, maps, VideoSegConfig())
    totals, stages = [], {}
    for _ in range(int(sys.argv[3])):
        start = time.perf_counter()
        _, info = segment_frames(frames, maps, VideoSegConfig())
        totals.append(time.perf_counter() - start)
        for stage, seconds in info["timings_s"].items():
            stages.setdefault(stage, []).append(seconds)
    result[label] = {stage: float(np.median(s)) / len(frames) for stage, s in stages.items()}
    result[label]["total"] = float(np.median(totals)) / len(frames)
print(json.dumps(result))
"""


def baseline(checkout: Path, frames: np.ndarray, attention: np.ndarray, repeats: int) -> dict[str, dict]:
    """``end_to_end`` of an older checkout's runtime (default config), run in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp, "wsvs")
        package.mkdir()
        for part in ("runtime", "cuda_kernels"):
            (package / part).symlink_to(checkout.resolve() / part)
        np.save(Path(tmp, "frames.npy"), frames)
        np.save(Path(tmp, "attention.npy"), attention)
        child = subprocess.run(
            [sys.executable, "-c", BASELINE_CHILD, f"{tmp}/frames.npy", f"{tmp}/attention.npy", str(repeats)],
            env={**os.environ, "PYTHONPATH": tmp}, capture_output=True, text=True, check=True,
        )
    return {f"before, {label}": run for label, run in json.loads(child.stdout).items()}


def copy_rate(nbytes: int, repeats: int) -> float:
    """Bytes per second np.copyto moves from one ``nbytes`` buffer into another (single thread)."""
    source = np.ones(nbytes // 4, dtype=np.float32)
    target = np.empty_like(source)
    return nbytes / float(np.median(time_calls(lambda: np.copyto(target, source), repeats, warmup=2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="an older checkout's folder (with runtime/) to time as well")
    args = parser.parse_args()
    frames = load_frames(args.frames)
    attention = box_attention(frames)
    base = VideoSegConfig(pooling="cpu")

    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    print(f"Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)")
    runs = baseline(args.baseline, frames, attention, args.repeats) if args.baseline else {}
    for name, compiled in PATHS.items():
        config = VideoSegConfig(**{**base.__dict__, "compiled": compiled})
        for label, maps in (("attention", attention), ("no attention", None)):
            runs[f"{name}, {label}"] = end_to_end(frames, maps, config, args.repeats)
    print(f"\nEnd to end, {args.frames} frames {frames.shape[2]}x{frames.shape[1]} segmented at 480x270; "
          "ms per frame (median of the runs)\n")
    print("| stage | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for stage in (*STAGES, "total"):
        print(f"| {stage} | " + " | ".join(f"{1e3 * run.get(stage, 0.0):.1f}" for run in runs.values()) + " |")
    print("| frames/s | " + " | ".join(f"{1 / run['total']:.1f}" for run in runs.values()) + " |")

    # Superpixels of one work-size frame, Lab conversion included; pooling of the video path's 8 maps.
    work = np.stack([cv2.resize(f, (480, 270), interpolation=cv2.INTER_AREA) for f in frames])
    lab = rgb_to_lab(work)
    labels = np.stack([lab_superpixels(f, base.num_superpixels, base.compactness, base.slic_iterations,
                                       compiled=True) for f in lab])
    rng = np.random.default_rng(0)
    maps = np.concatenate([lab.transpose(0, 3, 1, 2), work.transpose(0, 3, 1, 2),
                           rng.random((len(work), 2, 270, 480))], axis=1).astype(np.float32)
    count = int(labels.max()) + 1
    nbytes = maps.nbytes + labels.nbytes
    copy = copy_rate(maps.nbytes, 20)
    print(f"\nSuperpixels (Lab + SLIC, {base.num_superpixels} per frame, {base.slic_iterations} iterations) and "
          f"pooling ({maps.shape[1]} maps x {len(work)} frames at 480x270, {nbytes / 1e6:.0f} MB of labels + maps); "
          f"copy rate (np.copyto, {maps.nbytes / 1e6:.0f} MB): {copy / 1e9:.2f} GB/s\n")
    print("| path | superpixels ms/frame | pooling ms (20 frames) | pooling GB/s | share of copy rate |")
    print("|---|---|---|---|---|")
    for name, compiled in PATHS.items():
        slic = partial(lab_superpixels, rgb_to_lab(work[0]), base.num_superpixels, base.compactness,
                       base.slic_iterations, compiled=compiled)
        slic_s = np.median(time_calls(slic, args.repeats * 4, warmup=1))
        pool = partial(superpixel_pool, labels, maps, count, compiled=compiled)
        pool_s = np.median(time_calls(pool, args.repeats * 2, warmup=1))
        print(f"| {name} | {1e3 * slic_s:.1f} | {1e3 * pool_s:.1f} | {nbytes / pool_s / 1e9:.2f} | "
              f"{100 * nbytes / pool_s / copy:.0f}% |")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
