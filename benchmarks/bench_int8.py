"""int8 Q/DQ (7-bit weights) and fp16 against fp32: latency of the end-to-end segmenter graph on ONNX Runtime's
CPU provider, per input size, batch and intra-op thread count; markdown table on stdout.

Run: .venv/bin/python benchmarks/bench_int8.py --model DIR [--sizes 128,320] [--batches 1,8] [--threads 1,2]
DIR gets the random width-0.125 batch-norm model of `bench_runtime.py --tiny` when it has no model.onnx, then
model.fp16.onnx and model.int8.onnx (calibrated on 8 synthetic images): speed does not depend on the weights.
The timing loop is `wsvs bench`'s (`wsvs.runtime.timing.time_calls`); `wsvs bench` itself has no precision choice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from bench_runtime import tiny_model

from wsvs.export import quantize
from wsvs.runtime.backends import open_backend
from wsvs.runtime.bench import device_name, versions
from wsvs.runtime.contract import GraphMetadata
from wsvs.runtime.preprocess import normalise
from wsvs.runtime.timing import synthetic_images, time_calls

PRECISIONS = ("fp32", "fp16", "int8")


def integers(text: str) -> tuple[int, ...]:
    return tuple(int(value) for value in text.split(","))


def graph_metadata(path: Path) -> GraphMetadata:
    return GraphMetadata.from_props(open_backend(path, "segmenter", "ort-cpu").metadata, path)


def graphs(folder: Path) -> dict[str, Path]:
    """fp32, fp16 and int8 segmenter graphs in ``folder``, made when missing."""
    paths = {"fp32": folder / "model.onnx", "fp16": folder / "model.fp16.onnx", "int8": folder / "model.int8.onnx"}
    if not paths["fp32"].is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tiny_model(folder)
    if not paths["fp16"].is_file():
        quantize.to_fp16(paths["fp32"], paths["fp16"])
    if not paths["int8"].is_file():
        meta = graph_metadata(paths["fp32"])
        images = normalise(synthetic_images(8, 320, 320, seed=99), meta.mean, meta.std)
        quantize.to_int8(paths["fp32"], paths["int8"], [image[None] for image in images])
    return paths


def largest_weight(path: Path) -> int:
    """max |q| over the int8 weight initializers of a Q/DQ graph (zero points are 0 and do not change it)."""
    model = onnx.load(str(path))
    arrays = (onnx.numpy_helper.to_array(init) for init in model.graph.initializer
              if init.data_type == onnx.TensorProto.INT8)
    return max(int(np.abs(array.astype(np.int32)).max(initial=0)) for array in arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sizes", type=integers, default=(128, 320))
    parser.add_argument("--batches", type=integers, default=(1, 8))
    parser.add_argument("--threads", type=integers, default=(1, 2))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    paths = graphs(args.model)
    meta = graph_metadata(paths["fp32"])

    print(f"Device: {device_name()}; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    weight = largest_weight(paths["int8"])
    print(f"int8 graph: max |q| of the weights {weight}, worst int16 pair sum 2 * 255 * {weight} = {2 * 255 * weight}")
    print(f"p50 of {args.iterations} timed calls after {args.warmup} warm-up calls\n")
    print("| size | batch | threads | fp32 ms | fp16 ms | int8 ms | fp16/fp32 | int8/fp32 | labels fp16 = fp32 "
          "| labels int8 = fp32 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for threads in args.threads:
        backends = {p: open_backend(path, "segmenter", "ort-cpu", threads) for p, path in paths.items()}
        for size in args.sizes:
            for batch in args.batches:
                inputs = normalise(synthetic_images(batch, size, size, seed=batch), meta.mean, meta.std)
                labels = {p: backend.run(inputs, ("labels",))["labels"] for p, backend in backends.items()}
                p50 = {p: 1e3 * float(np.median(time_calls(lambda b=backend, x=inputs: b.run(x), args.iterations,
                                                           args.warmup)))
                       for p, backend in backends.items()}
                agree = {p: 100 * float(np.mean(labels[p] == labels["fp32"])) for p in PRECISIONS}
                print(f"| {size} | {batch} | {threads} | {p50['fp32']:.1f} | {p50['fp16']:.1f} | {p50['int8']:.1f} | "
                      f"{p50['fp16'] / p50['fp32']:.2f} | {p50['int8'] / p50['fp32']:.2f} | {agree['fp16']:.2f}% | "
                      f"{agree['int8']:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
