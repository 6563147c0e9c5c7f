"""Key-frame selection (only I-frames decoded) against a full decode, on the real clips in ../shared/data/videos.

    .venv/bin/python -m pytest -q benchmarks/bench_keyframes.py --benchmark-enable   # pytest-benchmark
    .venv/bin/python benchmarks/bench_keyframes.py                                   # markdown table

Both sides yield the same key-frames as RGB arrays: the full decode has to decode every frame to find them.
The window column is the cost of the clip windows afterwards: +-2 s around every key-frame, decoded by seeking.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from wsvs.runtime.keyframes import iter_keyframes, merge_windows, window_times
from wsvs.runtime.timing import time_calls

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
CLIPS = ("cockatoo", "realshort", "bikes", "carphone_pristine", "bigbuckbunny")
WINDOW = 2.0


def keyframes_by_skipping(path: Path) -> int:
    return sum(1 for _ in iter_keyframes(path))


def keyframes_by_full_decode(path: Path) -> int:
    count = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.key_frame:
                frame.to_ndarray(format="rgb24")
                count += 1
    return count


def windows_by_seeking(path: Path) -> int:
    keys = [t for t, _ in iter_keyframes(path)]
    return sum(len(window_times(path, start, end)) for start, end in merge_windows(keys, WINDOW))


def _clip(name: str) -> Path:
    path = VIDEOS / f"{name}.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not present (the real clips sit in ../shared/data beside the repo)")
    return path


@pytest.mark.parametrize("name", CLIPS)
def test_keyframes_skipping(benchmark, name: str) -> None:
    path = _clip(name)
    assert benchmark(keyframes_by_skipping, path) == keyframes_by_full_decode(path)


@pytest.mark.parametrize("name", CLIPS)
def test_keyframes_full_decode(benchmark, name: str) -> None:
    assert benchmark(keyframes_by_full_decode, _clip(name)) > 0


def _median_ms(fn, path: Path, repeats: int) -> float:
    # one warm-up call: file cache, codec initialisation
    return 1000 * float(np.median(time_calls(lambda: fn(path), repeats, warmup=1)))


def main(repeats: int = 7) -> None:
    print("| clip | size, frames | key-frames | full decode ms | key-frames only ms | speed-up | windows +-2 s ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in CLIPS:
        path = VIDEOS / f"{name}.mp4"
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            size = f"{stream.codec_context.width}x{stream.codec_context.height}, {stream.frames}"
        full = _median_ms(keyframes_by_full_decode, path, repeats)
        skipping = _median_ms(keyframes_by_skipping, path, repeats)
        windows = _median_ms(windows_by_seeking, path, repeats)
        print(f"| {name} | {size} | {keyframes_by_skipping(path)} | {full:.1f} | {skipping:.1f} | "
              f"{full / skipping:.1f}x | {windows:.1f} |")


if __name__ == "__main__":
    main()
