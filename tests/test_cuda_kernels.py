"""The superpixel pooling kernel: NVRTC compile check, host build against the numpy reference, GPU parity."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest

from wsvs.cuda_kernels import pooling
from wsvs.cuda_kernels.host_build import HostExecutor, build_host_library
from wsvs.runtime import cuda_api
from wsvs.runtime.io import read_image_rgb
from wsvs.runtime.pooling import superpixel_pool as reference_pool
from wsvs.runtime.superpixels import rgb_to_lab, slic_superpixels

ARCHS = ["sm_72", "sm_80", "sm_87", "sm_89", "sm_90"]
KERNELS = [b"pool_accumulate_planar_f32", b"pool_accumulate_interleaved_u8", b"pool_means"]
DEPRECATED_ARCH = "Architectures prior to '<compute/sm>_75' are deprecated"


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_cubin_for_arch(arch: str) -> None:
    cubin, log = pooling.compile_kernels(arch)
    assert cubin[:4] == b"\x7fELF"
    for kernel in KERNELS:
        assert kernel in cubin
    warnings = [line for line in log.splitlines() if line.strip() and DEPRECATED_ARCH not in line]
    assert warnings == [], log


def test_compiling_leaves_torch_checkpoints_readable(tmp_path) -> None:
    # NVRTC in the caller's process made torch.load misread every file afterwards
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.arange(8.0)}, tmp_path / "state.pt")
    pooling.compile_kernels("sm_80")
    assert torch.equal(torch.load(tmp_path / "state.pt", weights_only=True)["w"], torch.arange(8.0))


def test_cubin_is_cached_per_arch(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = pooling.cached_cubin("sm_87")
    (cached,) = (tmp_path / "wsvs" / "kernels" / "sm_87").glob("*.cubin")
    assert cached.read_bytes() == first

    def no_compile(arch: str) -> tuple[bytes, str]:
        raise AssertionError("the cached cubin should have been used")

    monkeypatch.setattr(pooling, "compile_kernels", no_compile)
    assert pooling.cached_cubin("sm_87") == first


@pytest.fixture(scope="module")
def host() -> HostExecutor:
    return pooling.host_executor()


def sum_error_bound(labels: np.ndarray, values: np.ndarray, num_superpixels: int) -> np.ndarray:
    """Twice the worst rounding error of summing n float64 terms in any order: 2 * gamma(n - 1) * sum|v|."""
    abs_sums, counts, _ = reference_pool(labels, np.abs(values), num_superpixels)
    terms = np.maximum(counts - 1, 0)[..., None].astype(np.float64)
    gamma = terms * 2.0**-53 / (1 - terms * 2.0**-53)
    return 2 * gamma * abs_sums * (1 + 2.0**-40)  # the margin covers the rounding of abs_sums itself


def assert_matches_reference(
    result: tuple[np.ndarray, np.ndarray, np.ndarray], labels: np.ndarray, values: np.ndarray, num_superpixels: int
) -> None:
    sums, counts, means = result
    ref_sums, ref_counts, ref_means = reference_pool(labels, values, num_superpixels)
    assert sums.dtype == np.float64 and counts.dtype == np.int64 and means.dtype == np.float32
    np.testing.assert_array_equal(counts, ref_counts)
    assert np.all(np.abs(sums - ref_sums) <= sum_error_bound(labels, values, num_superpixels))
    if np.all(values >= 0):  # sums within 2^-30 relative: the float32 means differ by at most one unit
        assert np.abs(means.view(np.int32).astype(np.int64) - ref_means.view(np.int32)).max(initial=0) <= 1
    np.testing.assert_array_equal(means[counts == 0], 0)


def random_case(seed: int, batch: int, channels: int, height: int, width: int, num_superpixels: int, signed: bool):
    rng = np.random.default_rng(seed)
    # Blocky ids like superpixels, drawn from a subset so that some superpixels stay empty.
    used = rng.choice(num_superpixels, size=max(1, num_superpixels * 3 // 4), replace=False)
    coarse = rng.choice(used, size=(batch, -(-height // 3), -(-width // 5)))
    labels = np.ascontiguousarray(coarse.repeat(3, axis=1).repeat(5, axis=2)[:, :height, :width]).astype(np.int32)
    # Magnitudes over 2^-17..2^17: float64 sums of float32s with a narrow range of exponents add exactly.
    shape = (batch, channels, height, width)
    magnitudes = np.exp(rng.normal(0, 4, shape))
    values = magnitudes * rng.choice([-1, 1], shape) if signed else magnitudes
    return labels, values.astype(np.float32)


# (batch, channels, height, width, superpixels, shared budget, min blocks, privatised, chunks)
CASES = [
    (1, 1, 17, 23, 5, pooling.SHARED_BUDGET, 1, True, 1),
    (3, 5, 40, 61, 120, pooling.SHARED_BUDGET, 8, True, 1),
    (2, 20, 36, 48, 1000, pooling.SHARED_BUDGET, 8, True, 5),  # 1000 bins fit 4 channels beside the staging
    (2, 7, 30, 50, 64, pooling.STAGE_BYTES + 64 * (8 * 2 + 4), 16, True, 4),  # two channels per chunk, many tiles
    (2, 3, 30, 50, 64, pooling.STAGE_BYTES + 64 * 8, 4, False, 1),  # no channel fits: global atomics
    (5, 1, 7, 9, 1, pooling.SHARED_BUDGET, 64, True, 1),  # one superpixel, runs cut short
]


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_host_build_matches_reference(case, signed: bool) -> None:
    batch, channels, height, width, superpixels, budget, min_blocks, privatised, chunks = case
    plan = pooling.plan_launch(batch, channels, height * width, superpixels, budget, min_blocks)
    assert (plan.privatised, plan.grid[2]) == (privatised, chunks)
    labels, values = random_case(len(CASES) + channels, batch, channels, height, width, superpixels, signed)
    executor = pooling.host_executor(budget, min_blocks)
    assert_matches_reference(
        pooling.superpixel_pool(executor, labels, values, superpixels), labels, values, superpixels
    )


def test_integer_and_dyadic_maps_are_exact(host: HostExecutor) -> None:
    labels, values = random_case(1, 2, 4, 45, 80, 200, signed=False)
    for exact_values in [
        np.floor(np.minimum(values, 255)),
        np.round(np.minimum(values, 1) * 64) / 64,
    ]:  # colours; multiples of 2^-6
        exact_values = exact_values.astype(np.float32)
        result = pooling.superpixel_pool(host, labels, exact_values, 200)
        for got, want in zip(result, reference_pool(labels, exact_values, 200)):
            np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def real_frames(shared_data) -> tuple[np.ndarray, np.ndarray, int]:
    """Two DAVIS blackswan frames at 320x180 with their SLIC superpixels."""
    folder = shared_data / "davis2016_dev" / "JPEGImages" / "480p" / "blackswan"
    frames = np.stack([cv2.resize(read_image_rgb(folder / f"{i:05d}.jpg"), (320, 180)) for i in (0, 10)])
    labels = np.stack([slic_superpixels(frame, 400) for frame in frames])
    return frames, labels, int(labels.max()) + 1


def test_frames_mean_colours_equal_reference_on_real_frames(host: HostExecutor, real_frames) -> None:
    frames, labels, superpixels = real_frames
    planar = frames.transpose(0, 3, 1, 2).astype(np.float32)
    for got, want in zip(
        pooling.superpixel_pool_frames(host, labels, frames, superpixels), reference_pool(labels, planar, superpixels)
    ):
        np.testing.assert_array_equal(got, want)


def test_video_maps_match_reference_on_real_frames(host: HostExecutor, real_frames) -> None:
    frames, labels, superpixels = real_frames
    # The maps the video segmentation pools: Lab colour, RGB and a soft attention-like map.
    lab = rgb_to_lab(frames).transpose(0, 3, 1, 2).astype(np.float32)
    attention = np.stack([cv2.GaussianBlur(f[..., 1].astype(np.float32), (0, 0), 9) / 255.0 for f in frames])[:, None]
    maps = np.ascontiguousarray(np.concatenate([lab, frames.transpose(0, 3, 1, 2), attention], axis=1), np.float32)
    result = pooling.superpixel_pool(host, labels, maps, superpixels)
    assert_matches_reference(result, labels, maps, superpixels)
    assert np.array_equal(result[0][:, :, 3:6], reference_pool(labels, maps, superpixels)[0][:, :, 3:6])


def test_bad_inputs_raise(host: HostExecutor) -> None:
    labels, values = random_case(2, 1, 2, 10, 10, 8, signed=False)
    for bad in (8, -1):
        broken = labels.copy()
        broken[0, 5, 7] = bad
        with pytest.raises(ValueError, match=r"\[0, 8\)"):
            pooling.superpixel_pool(host, broken, values, 8)
    with pytest.raises(ValueError, match="int32"):
        pooling.superpixel_pool(host, labels.astype(np.int64), values, 8)
    with pytest.raises(ValueError, match="float32"):
        pooling.superpixel_pool(host, labels, values.astype(np.float64), 8)
    with pytest.raises(ValueError, match="differ in size"):
        pooling.superpixel_pool(host, labels[:, :9], values, 8)


def test_host_shim_runs_barrier_phases_and_catches_divergent_barriers(tmp_path) -> None:
    source = tmp_path / "reverse.cu"
    source.write_text(
        """
extern "C" __global__ void reverse(const int* in, int* out) {
    extern __shared__ double scratch[];
    int* shared = (int*)scratch;
    const int n = blockDim.x, base = blockIdx.x * n;
    shared[threadIdx.x] = in[base + threadIdx.x];
    __syncthreads();  // every write lands before any thread reads its mirror
    out[base + threadIdx.x] = shared[n - 1 - threadIdx.x];
}
extern "C" __global__ void divergent(int* out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}
#define TEST_KERNELS(X) X(reverse) X(divergent)
"""
    )
    executor = HostExecutor(build_host_library(source, "TEST_KERNELS", "scratch", 1024), 1024, 1)
    data = np.arange(3 * 64, dtype=np.int32)
    inp, out = executor.upload(data), executor.zeros(data.nbytes)
    executor.launch("reverse", (3, 1, 1), 64, 64 * 4, [(inp, ctypes.c_void_p), (out, ctypes.c_void_p)])
    np.testing.assert_array_equal(executor.download(out, (3, 64), np.dtype(np.int32)), data.reshape(3, 64)[:, ::-1])
    with pytest.raises(RuntimeError, match="divergent"):
        executor.launch("divergent", (1, 1, 1), 8, 0, [(out, ctypes.c_void_p)])


def test_plan_fits_shared_memory_and_covers_the_work() -> None:
    for channels, superpixels, pixels, budget in [
        (20, 1000, 172800, 48 * 1024),
        (3, 800, 57600, 48 * 1024),
        (6, 5000, 1000, 48 * 1024),
        (1, 1, 15, 48 * 1024),
    ]:
        plan = pooling.plan_launch(4, channels, pixels, superpixels, budget, 528)
        assert plan.shared_bytes <= budget
        assert plan.tile % pooling.STAGE_PIXELS == 0
        assert plan.grid[0] * plan.tile >= pixels > (plan.grid[0] - 1) * plan.tile
        assert plan.grid[2] * plan.chunk >= channels > (plan.grid[2] - 1) * plan.chunk
    assert not pooling.plan_launch(1, 2, 100, 7000, 48 * 1024, 1).privatised  # 7000 bins of one channel: 84 KiB


def test_executor_makes_its_context_current_in_every_calling_thread(monkeypatch) -> None:
    """A CUDA context is current per thread: the shared executor must not rely on the thread that built it."""
    calls = []

    def set_current(context):
        calls.append((threading.get_ident(), context))
        return (0,)

    # The driver calls of zeros and free; each cuCtxSetCurrent records its thread.
    driver = types.SimpleNamespace(cuCtxSetCurrent=set_current, cuMemAlloc=lambda nbytes: (0, 4096),
                                   cuMemsetD8=lambda pointer, value, nbytes: (0,), cuMemFree=lambda pointer: (0,))
    monkeypatch.setattr(cuda_api, "driver", lambda: driver)
    executor = object.__new__(pooling.CudaExecutor)  # without a GPU: only the context handling is under test
    executor._driver, executor._gpu = driver, cuda_api.Device(0, None, "primary context", "sm_90", 132)
    worker = threading.Thread(target=lambda: executor.free(executor.zeros(16)))
    worker.start()
    worker.join()
    assert calls == [(worker.ident, "primary context")] * 2


def test_loader_is_torch_free() -> None:
    code = "import sys, wsvs.cuda_kernels.pooling; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loader_without_gpu_raises_clear_error() -> None:
    if pooling.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA driver"):
        pooling.CudaExecutor()


needs_gpu = pytest.mark.skipif(not pooling.is_available(), reason="no NVIDIA GPU / CUDA driver (cuInit failed)")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("case", CASES)
def test_gpu_matches_reference(case) -> None:
    batch, channels, height, width, superpixels, *_ = case
    labels, values = random_case(7, batch, channels, height, width, superpixels, signed=False)
    gpu = pooling.default_executor()
    assert_matches_reference(pooling.superpixel_pool(gpu, labels, values, superpixels), labels, values, superpixels)
    frames = (values[:, :3] * 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()
    if channels >= 3:
        planar = frames.transpose(0, 3, 1, 2).astype(np.float32)
        for got, want in zip(
            pooling.superpixel_pool_frames(gpu, labels, frames, superpixels),
            reference_pool(labels, planar, superpixels),
        ):
            np.testing.assert_array_equal(got, want)


@pytest.mark.gpu
@needs_gpu
def test_gpu_kernel_time_at_480x360() -> None:
    gpu = pooling.default_executor()
    labels, values = random_case(3, 8, 5, 360, 480, 800, signed=False)
    labels_pointer, values_pointer = gpu.upload(labels), gpu.upload(values)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        out = pooling.launch_pool(gpu, labels_pointer, values_pointer, values.dtype, 8, 5, 360 * 480, 800)
        gpu.synchronize()
        timings.append(time.perf_counter() - start)
        sums = gpu.download(out.sums, (8, 800, 5), np.dtype(np.float64))
        for pointer in (out.sums, out.counts, out.means, out.bad_label):
            gpu.free(pointer)
    assert np.all(np.abs(sums - reference_pool(labels, values, 800)[0]) <= sum_error_bound(labels, values, 800))
    print(f"GPU pooling of 8x5 maps at 480x360, 800 superpixels: {min(timings) * 1e3:.3f} ms (with allocations)")
