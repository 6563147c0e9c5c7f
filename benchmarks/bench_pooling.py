"""Superpixel pooling at 480x360: the numpy reference, ONNX Runtime ScatterElements-add, the CUDA kernel.

    .venv/bin/python -m pytest -q benchmarks/bench_pooling.py --benchmark-enable   # pytest-benchmark
    .venv/bin/python benchmarks/bench_pooling.py                                   # markdown table

Inputs: one image of int32 superpixel ids on a regular grid of about S cells (compact, like SLIC's) and
C float32 maps. The numpy reference reads every input byte once, so its rate is given as GB/s of input bytes read
(labels + maps, once) next to the machine's copy rate (bytes copied per second by np.copyto of 256 MiB,
which reads and writes each byte). The ONNX graph is what an exported model would carry: Transpose +
Cast + Expand of the ids + ScatterElements(reduction="add") in float64 for the sums, and one more for
the counts. The CUDA kernel is timed with events on device-resident inputs (output allocation and
zeroing included) when a GPU is present.

``gpu_vs_cpu_row`` (run by ``benchmarks/gpu_check.py``, ``make gpu-check``) sets the kernel beside the numpy path
at several batch sizes: kernel time alone, time with the host transfers, and the rate of the bytes the
kernels must move at least.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

import numpy as np
import pytest

from wsvs.cuda_kernels import pooling
from wsvs.runtime import cuda_api
from wsvs.runtime.pooling import superpixel_pool
from wsvs.runtime.timing import time_calls

HEIGHT, WIDTH = 360, 480
CASES = [(superpixels, channels) for superpixels in (600, 1000) for channels in (1, 5, 20)]


def grid_labels(batch: int, superpixels: int) -> tuple[np.ndarray, int]:
    """Ids of square cells covering HEIGHT x WIDTH, about ``superpixels`` of them; returns (labels, count)."""
    step = round(np.sqrt(HEIGHT * WIDTH / superpixels))
    cols = -(-WIDTH // step)
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    labels = (ys // step) * cols + xs // step
    return np.broadcast_to(labels, (batch, HEIGHT, WIDTH)).astype(np.int32), int(labels.max()) + 1


def make_inputs(batch: int, superpixels: int, channels: int) -> tuple[np.ndarray, np.ndarray, int]:
    labels, count = grid_labels(batch, superpixels)
    values = np.random.default_rng(0).random((batch, channels, HEIGHT, WIDTH), dtype=np.float32)
    return labels, values, count


def median_seconds(function: Callable[[], object], repeats: int = 15) -> float:
    return float(np.median(time_calls(function, repeats, warmup=1)))


def copy_rate() -> float:
    """Bytes per second np.copyto copies between two 256 MiB arrays."""
    source = np.ones(64 * 2**20, dtype=np.float32)
    target = np.empty_like(source)
    return source.nbytes / median_seconds(lambda: np.copyto(target, source), repeats=7)


def onnx_pool(batch: int, channels: int, superpixels: int) -> Callable[[np.ndarray, np.ndarray], list[np.ndarray]]:
    """An ONNX Runtime (CPU) session computing sums (B*S, C) float64 and counts (B*S,) int64."""
    import onnx  # imported here: `make gpu-check` runs the GPU rows where neither onnx nor onnxruntime is installed
    import onnxruntime as ort
    from onnx import TensorProto, helper

    pixels = batch * HEIGHT * WIDTH
    constant = {
        "offsets": np.arange(batch, dtype=np.int64).reshape(batch, 1, 1) * superpixels,
        "pixels_by_channels": np.array([pixels, channels], dtype=np.int64),
        "pixels_by_one": np.array([pixels, 1], dtype=np.int64),
        "pixels": np.array([pixels], dtype=np.int64),
        "bins_by_channels": np.array([batch * superpixels, channels], dtype=np.int64),
        "bins": np.array([batch * superpixels], dtype=np.int64),
    }
    zero_double = helper.make_tensor("zero", TensorProto.DOUBLE, [1], [0.0])
    nodes = [
        helper.make_node("Transpose", ["values"], ["pixel_major"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["pixel_major", "pixels_by_channels"], ["updates32"]),
        helper.make_node("Cast", ["updates32"], ["updates"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["labels"], ["labels64"], to=TensorProto.INT64),
        helper.make_node("Add", ["labels64", "offsets"], ["batch_ids"]),
        helper.make_node("Reshape", ["batch_ids", "pixels_by_one"], ["column"]),
        helper.make_node("Expand", ["column", "pixels_by_channels"], ["indices"]),
        helper.make_node("ConstantOfShape", ["bins_by_channels"], ["zero_sums"], value=zero_double),
        helper.make_node("ScatterElements", ["zero_sums", "indices", "updates"], ["sums"], axis=0, reduction="add"),
        helper.make_node("Reshape", ["batch_ids", "pixels"], ["flat_ids"]),
        helper.make_node(
            "ConstantOfShape", ["pixels"], ["ones"], value=helper.make_tensor("one", TensorProto.INT64, [1], [1])
        ),
        helper.make_node(
            "ConstantOfShape", ["bins"], ["zero_counts"], value=helper.make_tensor("z", TensorProto.INT64, [1], [0])
        ),
        helper.make_node("ScatterElements", ["zero_counts", "flat_ids", "ones"], ["counts"], axis=0, reduction="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "superpixel_pool",
        [
            helper.make_tensor_value_info("labels", TensorProto.INT32, [batch, HEIGHT, WIDTH]),
            helper.make_tensor_value_info("values", TensorProto.FLOAT, [batch, channels, HEIGHT, WIDTH]),
        ],
        [
            helper.make_tensor_value_info("sums", TensorProto.DOUBLE, [batch * superpixels, channels]),
            helper.make_tensor_value_info("counts", TensorProto.INT64, [batch * superpixels]),
        ],
        initializer=[onnx.numpy_helper.from_array(array, name) for name, array in constant.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda labels, values: session.run(None, {"labels": labels, "values": values})


def cuda_seconds(
    labels: np.ndarray, values: np.ndarray, superpixels: int, repeats: int = 20, gpu: pooling.CudaExecutor | None = None
) -> float:
    """Median GPU time (CUDA events) of launch_pool on device-resident inputs (on ``gpu``, else the first GPU)."""
    gpu = gpu or pooling.default_executor()
    batch, channels = values.shape[:2]
    labels_pointer, values_pointer = gpu.upload(labels), gpu.upload(values)
    buffers: list[pooling.PoolBuffers] = []

    def pool() -> None:
        buffers.append(
            pooling.launch_pool(
                gpu, labels_pointer, values_pointer, values.dtype, batch, channels, HEIGHT * WIDTH, superpixels
            )
        )

    timings = [gpu.elapsed_seconds(pool) for _ in range(repeats + 1)][1:]  # the first one warms up
    for out in buffers:
        for pointer in (out.sums, out.counts, out.means, out.bad_label):
            gpu.free(pointer)
    gpu.free(labels_pointer)
    gpu.free(values_pointer)
    return statistics.median(timings)


@pytest.mark.parametrize(("superpixels", "channels"), CASES)
def test_numpy_reference(benchmark, superpixels: int, channels: int) -> None:
    labels, values, count = make_inputs(1, superpixels, channels)
    _, counts, _ = benchmark(superpixel_pool, labels, values, count)
    assert counts.sum() == HEIGHT * WIDTH


@pytest.mark.parametrize(("superpixels", "channels"), CASES)
def test_onnxruntime_scatter_add(benchmark, superpixels: int, channels: int) -> None:
    labels, values, count = make_inputs(1, superpixels, channels)
    sums, counts = benchmark(onnx_pool(1, channels, count), labels, values)
    ref_sums, ref_counts, _ = superpixel_pool(labels, values, count)
    np.testing.assert_array_equal(counts, ref_counts.reshape(-1))
    np.testing.assert_allclose(sums, ref_sums.reshape(-1, channels), rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not pooling.is_available(), reason="no NVIDIA GPU / CUDA driver (cuInit failed)")
@pytest.mark.parametrize(("superpixels", "channels"), CASES)
def test_cuda_kernel(benchmark, superpixels: int, channels: int) -> None:
    labels, values, count = make_inputs(8, superpixels, channels)
    gpu = pooling.default_executor()
    labels_pointer, values_pointer = gpu.upload(labels), gpu.upload(values)

    def run() -> pooling.PoolBuffers:
        out = pooling.launch_pool(gpu, labels_pointer, values_pointer, values.dtype, 8, channels, HEIGHT * WIDTH, count)
        gpu.synchronize()
        return out

    out = benchmark(run)
    counts = gpu.download(out.counts, (8, count), np.dtype(np.uint64))
    np.testing.assert_array_equal(counts, superpixel_pool(labels, values, count)[1])


class LaunchTimer:
    """The executor ``gpu`` with each kernel launch timed between two CUDA events; ``seconds`` adds them up.

    Only the kernels count: launch_pool's output allocations and memsets fall outside the events.
    """

    def __init__(self, gpu: pooling.CudaExecutor) -> None:
        self.gpu = gpu
        self.seconds = 0.0

    def __getattr__(self, name: str):
        return getattr(self.gpu, name)

    def launch(self, *args) -> None:
        self.seconds += self.gpu.elapsed_seconds(lambda: self.gpu.launch(*args))


def gpu_copy_rate(gpu: pooling.CudaExecutor, nbytes: int = 2**30) -> float:
    """Bytes read + written per second by a device-to-device copy of ``nbytes`` (median of 5, CUDA events)."""
    driver = cuda_api.driver()
    source, target = gpu.zeros(nbytes), gpu.zeros(nbytes)

    def copy() -> None:
        cuda_api.check(driver.cuMemcpyDtoD(target, source, nbytes))

    try:
        return 2 * nbytes / statistics.median([gpu.elapsed_seconds(copy) for _ in range(6)][1:])
    finally:
        gpu.free(source)
        gpu.free(target)


def kernel_seconds(
    gpu: pooling.CudaExecutor, labels: np.ndarray, values: np.ndarray, superpixels: int, repeats: int = 20
) -> float:
    """Median time of the kernels alone (LaunchTimer) of launch_pool on device-resident inputs."""
    batch, channels = values.shape[:2]
    labels_pointer, values_pointer = gpu.upload(labels), gpu.upload(values)
    timer, timings = LaunchTimer(gpu), []
    for _ in range(repeats + 1):  # the first one warms up
        timer.seconds = 0.0
        out = pooling.launch_pool(
            timer, labels_pointer, values_pointer, values.dtype, batch, channels, HEIGHT * WIDTH, superpixels
        )
        timings.append(timer.seconds)
        for pointer in (out.sums, out.counts, out.means, out.bad_label):
            gpu.free(pointer)
    gpu.free(labels_pointer)
    gpu.free(values_pointer)
    return statistics.median(timings[1:])


def gpu_vs_cpu_row(
    gpu: pooling.CudaExecutor, batch: int, superpixels: int = 800, channels: int = 5, repeats: int = 20
) -> dict:
    """The kernel beside the numpy reference on ``batch`` images of HEIGHT x WIDTH: seconds and bytes.

    ``kernel_s``: the two kernels alone on device-resident inputs (events around each launch, summed);
    ``device_pool_s``: launch_pool with its output allocations and memsets (events around the call);
    ``end_to_end_s``: wall time of ``pooling.superpixel_pool`` from host arrays to host arrays (pageable
    uploads, pooling, downloads, frees); ``cpu_s``: ``wsvs.runtime.pooling.superpixel_pool`` on the same arrays.
    ``bytes_moved`` is the least the kernels must move: labels and maps read once, sums, counts and means
    written once (the atomics and the means pass re-reading the sums are not counted).
    """
    labels, values, count = make_inputs(batch, superpixels, channels)
    reference = superpixel_pool(labels, values, count)
    sums, counts, _ = pooling.superpixel_pool(gpu, labels, values, count)
    np.testing.assert_array_equal(counts, reference[1])
    np.testing.assert_allclose(sums, reference[0], rtol=1e-10)

    def cpu() -> object:
        return superpixel_pool(labels, values, count)

    cpu_repeats = int(np.clip(2 / median_seconds(cpu, repeats=1), 3, 15))  # about two seconds at most
    input_bytes = labels.nbytes + values.nbytes
    return {
        "batch": batch,
        "superpixels": count,
        "channels": channels,
        "input_bytes": input_bytes,
        "bytes_moved": input_bytes + batch * count * (8 * channels + 8 + 4 * channels),
        "cpu_s": median_seconds(cpu, repeats=cpu_repeats),
        "kernel_s": kernel_seconds(gpu, labels, values, count, repeats),
        "device_pool_s": cuda_seconds(labels, values, count, repeats, gpu),
        "end_to_end_s": median_seconds(lambda: pooling.superpixel_pool(gpu, labels, values, count), repeats=10),
    }


def table_row(superpixels: int, channels: int, copy: float, gpu: bool) -> str:
    labels, values, count = make_inputs(1, superpixels, channels)
    input_bytes = labels.nbytes + values.nbytes
    numpy_s = median_seconds(lambda: superpixel_pool(labels, values, count))
    run_onnx = onnx_pool(1, channels, count)
    onnx_s = median_seconds(lambda: run_onnx(labels, values))
    row = (
        f"| {count} | {channels} | {input_bytes / 1e6:.2f} | {numpy_s * 1e3:.2f} | "
        f"{input_bytes / numpy_s / 1e9:.2f} | {input_bytes / numpy_s / copy:.0%} | {onnx_s * 1e3:.2f} | "
        f"{onnx_s / numpy_s:.1f}x |"
    )
    if gpu:
        labels8, values8, _ = make_inputs(8, superpixels, channels)
        cuda_one, cuda_eight = cuda_seconds(labels, values, count), cuda_seconds(labels8, values8, count)
        row += f" {cuda_one * 1e3:.3f} | {cuda_eight / 8 * 1e3:.3f} | {input_bytes * 8 / cuda_eight / 1e9:.0f} |"
    return row


def main() -> None:
    copy = copy_rate()
    gpu = pooling.is_available()
    device = f"GPU {pooling.default_executor().arch}" if gpu else "no GPU"
    print(f"np.copyto of 256 MiB: {copy / 1e9:.2f} GB/s copied; {device}")
    header = "| S | C | input MB | numpy ms | numpy GB/s read | of copy rate | ORT ScatterElements ms | ORT / numpy |"
    rule = "|---|---|---|---|---|---|---|---|"
    if gpu:
        header += " CUDA ms (B=1) | CUDA ms per image (B=8) | CUDA GB/s read (B=8) |"
        rule += "---|---|---|"
    print(header, rule, sep="\n")
    for superpixels, channels in CASES:
        print(table_row(superpixels, channels, copy, gpu))
    import onnxruntime

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}")


if __name__ == "__main__":
    main()
