"""The Python API's overhead over a raw ONNX Runtime session on the same graph, at batch 1; markdown table on stdout.

Run: .venv/bin/python benchmarks/bench_api.py --model DIR [--size 321] [--iterations 60] [--threads 2]
DIR gets the random width-0.125 model of `bench_runtime.py --tiny` when it has no model.onnx (speed does not depend on
the weights). Three ways to label one size x size RGB image, timed in turns so that drifts of the machine hit all alike:
- raw session: ``InferenceSession.run`` (the API's own session) on the image already normalised (the graph alone);
- raw + normalise: what a user of a raw session writes at least (normalise, then run);
- API: ``Segmenter(model, "ort-cpu")(image)`` (working size, normalise, run, labels at the image's size).
The overhead is the API's median over the raw + normalise median, minus one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime
from bench_runtime import tiny_model

from wsvs.runtime import Segmenter
from wsvs.runtime.bench import device_name, versions
from wsvs.runtime.preprocess import normalise
from wsvs.runtime.timing import synthetic_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, 0: all cores")
    args = parser.parse_args()
    graph = args.model / "model.onnx"
    if not graph.is_file():
        args.model.mkdir(parents=True, exist_ok=True)
        tiny_model(args.model)

    api = Segmenter(graph, "ort-cpu", batch=1, long_side=args.size, threads=args.threads)
    # The API's own session: a second session's thread pool would spin after each of its calls and slow the
    # other's on the same cores, which measures the two pools, not the API.
    session: onnxruntime.InferenceSession = api.images.backend.session
    mean, std = api.images.metadata.mean, api.images.metadata.std
    image = synthetic_images(1, args.size, args.size, seed=0)[0]
    ready = normalise(image[None], mean, std)
    calls = {
        "raw session": lambda: session.run(["labels", "scores"], {"images": ready}),
        "raw + normalise": lambda: session.run(["labels", "scores"], {"images": normalise(image[None], mean, std)}),
        "API": lambda: api(image),
    }
    assert np.array_equal(api(image).labels, calls["raw session"]()[0][0])  # the same graph, the same labels
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for step in range(args.warmup + args.iterations):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if step >= args.warmup:
                seconds[name].append(time.perf_counter() - started)
    median = {name: float(np.median(values)) for name, values in seconds.items()}
    print(f"Device: {device_name()}; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"{args.size}x{args.size} image, batch 1, {args.iterations} timed calls each after {args.warmup} warm-up "
          f"calls, in turns; ONNX Runtime threads {args.threads or 'default'}\n")
    print("| call | p50 ms | p95 ms | vs raw + normalise |\n|---|---:|---:|---:|")
    for name, values in seconds.items():
        print(f"| {name} | {1e3 * median[name]:.2f} | {1e3 * float(np.percentile(values, 95)):.2f} | "
              f"{median[name] / median['raw + normalise']:.3f}x |")
    print(f"\nAPI overhead over raw + normalise: {100 * (median['API'] / median['raw + normalise'] - 1):+.1f}%")


if __name__ == "__main__":
    main()
