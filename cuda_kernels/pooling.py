"""Superpixel pooling on an NVIDIA GPU: the kernels of superpixel_pool.cu, loaded through NVRTC.

Reproduces ``wsvs.runtime.pooling.superpixel_pool``: counts exactly, sums within the bound derived in
superpixel_pool.cu (equal bit for bit when no addition rounds, e.g. for colours), means from those sums with
the reference's arithmetic. The source is compiled at first use for the GPU's architecture and the cubin is
cached under ``~/.cache/wsvs/kernels/<sm_XY>/``. The launch sequence runs through an executor: the
CUDA driver here, or the host build (``host_executor``) that runs the same source on the CPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from wsvs.runtime import cuda_api
from wsvs.runtime.cuda_api import check
from wsvs.runtime.io import atomic_path

from .host_build import HostExecutor, KernelParam, build_host_library, pack_params

SOURCE = Path(__file__).with_name("superpixel_pool.cu")
NVRTC_OPTIONS = (b"-std=c++17",)
THREADS = 256
RUN_PIXELS = 8  # RUN_PIXELS in superpixel_pool.cu
STAGE_PIXELS = THREADS * RUN_PIXELS  # pixels a block stages at a time: a tile is a whole number of stages
STAGE_BYTES = 4 * (STAGE_PIXELS + STAGE_PIXELS // 32)  # the staging buffer, one padding word per 32 (STAGE_INDEX)
SHARED_BUDGET = 48 * 1024  # shared memory any CUDA GPU gives a block without opting in
ACCUMULATE = {np.dtype(np.float32): "pool_accumulate_planar_f32", np.dtype(np.uint8): "pool_accumulate_interleaved_u8"}


class Executor(Protocol):
    """Memory and launches on one device: pointers are plain integers."""

    shared_budget: int  # bytes of shared memory a block may use
    min_blocks: int  # blocks that keep the whole device busy

    def upload(self, array: np.ndarray) -> int: ...
    def zeros(self, nbytes: int) -> int: ...
    def download(self, pointer: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...
    def free(self, pointer: int) -> None: ...
    def launch(
        self, kernel: str, grid: tuple[int, int, int], threads: int, shared_bytes: int, params: list[KernelParam]
    ) -> None: ...


@dataclass(frozen=True)
class LaunchPlan:
    """How pool_accumulate_* splits the work: grid (tiles, images, channel chunks)."""

    grid: tuple[int, int, int]
    tile: int  # pixels per block
    chunk: int  # channels per block
    privatised: bool  # bins in shared memory, else global atomics
    shared_bytes: int


def plan_launch(
    batch: int, channels: int, pixels: int, num_superpixels: int, shared_budget: int, min_blocks: int
) -> LaunchPlan:
    """Choose channel chunks whose bins fit in ``shared_budget`` beside the staging buffer, and enough pixel tiles
    to fill the device."""
    bins = max(num_superpixels, 1)
    fitting = (shared_budget - STAGE_BYTES - 4 * bins) // (8 * bins)  # channels whose sums fit beside the counts
    privatised = fitting >= min(channels, 1)
    chunk = min(channels, fitting) if privatised else channels
    chunks = math.ceil(channels / chunk) if channels else 1
    shared_bytes = STAGE_BYTES + (bins * (8 * chunk + 4) if privatised else 0)
    stages = max(1, math.ceil(pixels / STAGE_PIXELS))
    tiles = min(max(1, math.ceil(min_blocks / (batch * chunks))), stages)
    tile = math.ceil(stages / tiles) * STAGE_PIXELS
    return LaunchPlan((math.ceil(pixels / tile), batch, chunks), tile, chunk, privatised, shared_bytes)


@dataclass(frozen=True)
class PoolBuffers:
    """Device pointers of one pooling: sums (B, S, C) float64, counts (B, S) uint64, means (B, S, C) float32."""

    sums: int
    counts: int
    means: int
    bad_label: int  # uint32, non-zero when some id was out of range


def launch_pool(
    executor: Executor,
    labels: int,
    values: int,
    value_dtype: np.dtype,
    batch: int,
    channels: int,
    pixels: int,
    num_superpixels: int,
) -> PoolBuffers:
    """Pool device-resident ``labels`` (B, H*W) int32 and ``values`` (float32 (B, C, H*W) or uint8 (B, H*W, C)).

    The caller frees the returned buffers with ``executor.free``.
    """
    p, i, q = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    bins = batch * num_superpixels
    out = PoolBuffers(
        executor.zeros(8 * bins * channels),
        executor.zeros(8 * bins),
        executor.zeros(4 * bins * channels),
        executor.zeros(4),
    )
    if batch and pixels:
        plan = plan_launch(batch, channels, pixels, num_superpixels, executor.shared_budget, executor.min_blocks)
        params = [
            (labels, p), (values, p), (channels, i), (pixels, q), (num_superpixels, i), (plan.tile, q),
            (plan.chunk, i), (int(plan.privatised), i), (out.sums, p), (out.counts, p), (out.bad_label, p),
        ]  # fmt: skip
        executor.launch(ACCUMULATE[np.dtype(value_dtype)], plan.grid, THREADS, plan.shared_bytes, params)
    if bins * channels:
        blocks = min(math.ceil(bins * channels / THREADS), 65535)
        params = [(out.sums, p), (out.counts, p), (out.means, p), (bins, q), (channels, i)]
        executor.launch("pool_means", (blocks, 1, 1), THREADS, 0, params)
    return out


def _pool(
    executor: Executor, labels: np.ndarray, values: np.ndarray, channels: int, num_superpixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch, height, width = labels.shape
    if batch > 65535:
        raise ValueError(f"at most 65535 images per call, got {batch}")
    if num_superpixels < 0 or num_superpixels >= 2**31:
        raise ValueError(f"num_superpixels must lie in [0, 2^31), got {num_superpixels}")
    labels_pointer, values_pointer = executor.upload(labels), executor.upload(values)
    try:
        out = launch_pool(
            executor, labels_pointer, values_pointer, values.dtype, batch, channels, height * width, num_superpixels
        )
    finally:
        executor.free(labels_pointer)
        executor.free(values_pointer)
    try:
        if executor.download(out.bad_label, (1,), np.dtype(np.uint32))[0]:
            raise ValueError(f"superpixel ids must lie in [0, {num_superpixels})")
        return (
            executor.download(out.sums, (batch, num_superpixels, channels), np.dtype(np.float64)),
            executor.download(out.counts, (batch, num_superpixels), np.dtype(np.uint64)).astype(np.int64),
            executor.download(out.means, (batch, num_superpixels, channels), np.dtype(np.float32)),
        )
    finally:
        for pointer in (out.sums, out.counts, out.means, out.bad_label):
            executor.free(pointer)


def _check_labels(labels: np.ndarray, image_shape: tuple[int, ...]) -> None:
    if labels.ndim != 3 or labels.dtype != np.int32:
        raise ValueError(f"expected labels (B, H, W) int32, got {labels.shape} {labels.dtype}")
    if labels.shape != image_shape:
        raise ValueError(f"labels {labels.shape} and values differ in size ({image_shape})")


def superpixel_pool(
    executor: Executor, labels: np.ndarray, values: np.ndarray, num_superpixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``wsvs.runtime.pooling.superpixel_pool`` on ``executor``: labels (B, H, W) int32, values (B, C, H, W) float32."""
    labels, values = np.asarray(labels), np.asarray(values)
    if values.ndim != 4 or values.dtype != np.float32:
        raise ValueError(f"expected values (B, C, H, W) float32, got {values.shape} {values.dtype}")
    _check_labels(labels, (values.shape[0], *values.shape[2:]))
    return _pool(executor, labels, values, values.shape[1], num_superpixels)


def superpixel_pool_frames(
    executor: Executor, labels: np.ndarray, frames: np.ndarray, num_superpixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-superpixel colour sums, counts and means of (B, H, W, C) uint8 frames (C = 3 for RGB).

    Equals ``superpixel_pool`` of ``frames.transpose(0, 3, 1, 2).astype(np.float32)`` bit for bit.
    """
    labels, frames = np.asarray(labels), np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"expected frames (B, H, W, C) uint8, got {frames.shape} {frames.dtype}")
    _check_labels(labels, frames.shape[:3])
    return _pool(executor, labels, frames, frames.shape[3], num_superpixels)


def host_executor(shared_budget: int = SHARED_BUDGET, min_blocks: int = 8) -> HostExecutor:
    """The kernels built for the CPU with g++ (host_shim.h): the logic check that needs no GPU."""
    library = build_host_library(SOURCE, "SUPERPIXEL_POOL_KERNELS", "pool_shared", SHARED_BUDGET)
    return HostExecutor(library, shared_budget, min_blocks)


# ---- NVRTC and the CUDA driver (cuda-python, through wsvs.runtime.cuda_api) ----


def compile_kernels(arch: str) -> tuple[bytes, str]:
    """Compile superpixel_pool.cu with NVRTC for ``arch`` (e.g. ``"sm_87"``); return the cubin and the log.

    NVRTC runs in a child process: once it has compiled in a process, torch.load there misreads every
    checkpoint (measured with torch 2.13 and NVRTC 12.9), and the training stages hold torch.
    """
    result = subprocess.run([sys.executable, "-m", "wsvs.cuda_kernels.pooling", arch], capture_output=True)
    log = result.stderr.decode(errors="replace").strip()
    if result.returncode != 0:
        raise RuntimeError(log or f"NVRTC compile for {arch} exited with {result.returncode}")
    return result.stdout, log


def _compile_in_this_process(arch: str) -> tuple[bytes, str]:
    nvrtc = cuda_api.nvrtc()
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    status, program = nvrtc.nvrtcCreateProgram(SOURCE.read_bytes(), SOURCE.name.encode(), 0, [], [])
    if status != ok:
        raise RuntimeError(f"NVRTC could not create a program: {status.name}")
    try:
        options = [f"--gpu-architecture={arch}".encode(), *NVRTC_OPTIONS]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        _, size = nvrtc.nvrtcGetProgramLogSize(program)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(program, log)
        log = log.rstrip(b"\0 ").decode(errors="replace")
        if status != ok:
            raise RuntimeError(f"NVRTC failed to compile {SOURCE.name} for {arch}:\n{log}")
        _, size = nvrtc.nvrtcGetCUBINSize(program)
        cubin = b" " * size
        nvrtc.nvrtcGetCUBIN(program, cubin)
        return cubin, log
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wsvs" / "kernels"


def cached_cubin(arch: str) -> bytes:
    """The cubin for ``arch`` from the on-disk cache, compiling it first when the source or NVRTC changed."""
    _, major, minor = cuda_api.nvrtc().nvrtcVersion()
    digest = hashlib.sha256(SOURCE.read_bytes() + b"\0".join(NVRTC_OPTIONS) + f"{major}.{minor}".encode())
    path = cache_root() / arch / f"{digest.hexdigest()[:16]}.cubin"
    if path.exists():
        return path.read_bytes()
    cubin, _ = compile_kernels(arch)
    with atomic_path(path) as tmp:
        tmp.write_bytes(cubin)
    return cubin


def is_available() -> bool:
    """Whether cuda-python finds a CUDA driver and at least one GPU."""
    return cuda_api.is_available()


class CudaExecutor:
    """The kernels on one GPU (its primary context), through the CUDA driver API.

    Every method first makes the GPU's context current in the calling thread: a CUDA context is current per thread,
    and the executor may be used from threads other than the one that built it (``default_executor`` is shared).
    """

    def __init__(self, device: int = 0) -> None:
        gpu = self._gpu = cuda_api.open_device(device)  # a CudaError (a RuntimeError) without a driver or GPU
        driver = self._driver = cuda_api.driver()
        self.arch = gpu.arch
        self.shared_budget = SHARED_BUDGET
        self.min_blocks = 4 * gpu.multiprocessors
        module = check(driver.cuModuleLoadData(cached_cubin(self.arch)))
        names = [*ACCUMULATE.values(), "pool_means"]
        self._functions = {name: check(driver.cuModuleGetFunction(module, name.encode())) for name in names}

    def upload(self, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        pointer = self.zeros(array.nbytes)  # makes the context current
        if array.nbytes:
            check(self._driver.cuMemcpyHtoD(pointer, array, array.nbytes))
        return pointer

    def zeros(self, nbytes: int) -> int:
        self._gpu.make_current()
        pointer = int(check(self._driver.cuMemAlloc(max(nbytes, 1))))
        check(self._driver.cuMemsetD8(pointer, 0, max(nbytes, 1)))
        return pointer

    def download(self, pointer: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        self._gpu.make_current()
        array = np.empty(shape, dtype=dtype)
        if array.nbytes:
            check(self._driver.cuMemcpyDtoH(array, pointer, array.nbytes))
        return array

    def free(self, pointer: int) -> None:
        self._gpu.make_current()
        check(self._driver.cuMemFree(pointer))

    def launch(
        self, kernel: str, grid: tuple[int, int, int], threads: int, shared_bytes: int, params: list[KernelParam]
    ) -> None:
        self._gpu.make_current()
        pointers, _alive = pack_params(params)
        check(
            self._driver.cuLaunchKernel(
                self._functions[kernel], *grid, threads, 1, 1, shared_bytes, 0, ctypes.addressof(pointers), 0
            )
        )

    def synchronize(self) -> None:
        self._gpu.make_current()
        check(self._driver.cuCtxSynchronize())

    def elapsed_seconds(self, work: Callable[[], object]) -> float:
        """GPU time of what ``work`` enqueues on the default stream, between two CUDA events."""
        self._gpu.make_current()
        start, end = (check(self._driver.cuEventCreate(0)) for _ in range(2))
        try:
            check(self._driver.cuEventRecord(start, 0))
            work()
            check(self._driver.cuEventRecord(end, 0))
            check(self._driver.cuEventSynchronize(end))
            return check(self._driver.cuEventElapsedTime(start, end)) / 1e3
        finally:
            check(self._driver.cuEventDestroy(start))
            check(self._driver.cuEventDestroy(end))


@functools.cache
def default_executor() -> CudaExecutor:
    """The first GPU, loaded at first use; a CudaError (a RuntimeError) when there is no GPU or driver."""
    return CudaExecutor(0)


if __name__ == "__main__":  # the child of compile_kernels: cubin on stdout, log on stderr
    try:
        cubin, log = _compile_in_this_process(sys.argv[1])
    except RuntimeError as error:
        sys.exit(str(error))
    sys.stderr.write(log)
    sys.stdout.buffer.write(cubin)
