"""cuda-python (``cuda.bindings``) in one place: the imports, status checks, device 0, streams and device buffers.

Used by the TensorRT backend (``wsvs.runtime.backends``), the engine build (``wsvs.export.tensorrt_build``) and
the CUDA kernels (``wsvs.cuda_kernels.pooling``). cuda-python is imported at first use, so this module loads on
a machine without it or without a GPU. Every failure is a ``CudaError``: one line that says what is missing or
which call failed, an ``InputError`` for the command lines (they print it and exit 2; backend "auto" moves on to
the next backend) and a ``RuntimeError`` for library callers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

# The GPU extras, one per CUDA major (pyproject.toml): the driver's CUDA version must be at least that major.
INSTALL = "pip install 'wsvs[gpu-cu12]', or 'wsvs[gpu-cu13]' with a CUDA 13 driver"


class CudaError(InputError, RuntimeError):
    """CUDA is missing (no cuda-python, no driver, no GPU) or a CUDA call failed; the message is one line."""

    def __init__(self, problem: str) -> None:
        super().__init__(None, problem)


def driver():
    """The CUDA driver API (``cuda.bindings.driver``)."""
    try:
        from cuda.bindings import driver as module
    except ImportError:
        raise CudaError(f"cuda-python is not installed ({INSTALL})") from None
    return module


def runtime():
    """The CUDA runtime API (``cuda.bindings.runtime``)."""
    try:
        from cuda.bindings import runtime as module
    except ImportError:
        raise CudaError(f"cuda-python is not installed ({INSTALL})") from None
    return module


def nvrtc():
    """NVRTC (``cuda.bindings.nvrtc``); its library comes from the nvidia-cuda-nvrtc-cu12 wheel."""
    try:
        from cuda.bindings import nvrtc as module
    except ImportError:
        raise CudaError(f"cuda-python is not installed ({INSTALL}; NVRTC also needs nvidia-cuda-nvrtc-cu12)") from None
    return module


def native_handle(value) -> int:
    """The handle that a cuda-python handle object (a stream, event or context) wraps, as an int.

    cuda-bindings 13 deprecates ``int(object)`` for this in favour of ``cuda.bindings.utils.get_cuda_native_handle``,
    which older cuda-bindings 12 releases lack.
    """
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(value)
    return get_cuda_native_handle(value)


def check(result: tuple):
    """Unwrap a cuda-python call's ``(status, *values)`` (driver, runtime or NVRTC): None, the one value, or a tuple
    of them; a CudaError naming the status when it is not success (0)."""
    status, *values = result
    if int(status) != 0:
        raise CudaError(f"CUDA call failed: {getattr(status, 'name', status)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def init_driver(device: int = 0):
    """The driver API after ``cuInit``, with GPU ``device`` present; a CudaError saying why there is none."""
    api = driver()
    try:
        (status,) = api.cuInit(0)
    except Exception as exc:  # cuda-python raises its own loader error when there is no NVIDIA driver
        reason = f"the NVIDIA driver library did not load: {type(exc).__name__}"
        raise CudaError(f"no usable CUDA driver ({reason})") from None
    if int(status) != 0:
        raise CudaError(f"no usable CUDA driver (cuInit: {getattr(status, 'name', status)})")
    status, count = api.cuDeviceGetCount()
    if int(status) != 0 or count <= device:
        raise CudaError(f"no CUDA GPU available (the CUDA driver finds no device {device})")
    return api


def is_available(device: int = 0) -> bool:
    """Whether cuda-python finds a CUDA driver and GPU ``device``."""
    try:
        init_driver(device)
        return True
    except Exception:  # no cuda-python, no driver library, no device: all mean "not available"
        return False


def driver_version() -> str:
    """The CUDA version the installed driver supports, e.g. "12.9" (the newest CUDA major it runs)."""
    version = check(init_driver(0).cuDriverGetVersion())
    return f"{version // 1000}.{version % 1000 // 10}"


def device_name(device: int = 0) -> str:
    """The name of GPU ``device`` (as the TensorRT engine sidecars record it)."""
    api = init_driver(device)
    raw = check(api.cuDeviceGetName(256, check(api.cuDeviceGet(device))))
    return raw.split(b"\0", 1)[0].decode()


@dataclass(frozen=True)
class Device:
    """A GPU and its primary context (driver API); ``make_current`` makes the context current in the calling
    thread, which every thread that uses the GPU must do first."""

    index: int
    handle: object  # CUdevice
    context: object  # CUcontext: the primary context, retained
    arch: str  # "sm_XY"
    multiprocessors: int

    def make_current(self) -> None:
        check(driver().cuCtxSetCurrent(self.context))


def open_device(device: int = 0) -> Device:
    """Initialise the driver, make GPU ``device``'s primary context current and read what kernel launches need."""
    api = init_driver(device)
    handle = check(api.cuDeviceGet(device))
    attribute = api.CUdevice_attribute
    major = check(api.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle))
    minor = check(api.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle))
    processors = check(api.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, handle))
    gpu = Device(device, handle, check(api.cuDevicePrimaryCtxRetain(handle)), f"sm_{major}{minor}", processors)
    gpu.make_current()
    return gpu


class Stream:
    """A CUDA stream (runtime API) with the device buffers allocated for work on it: asynchronous copies between
    host arrays and buffers, and ``close`` to free everything (also on garbage collection)."""

    def __init__(self) -> None:
        self._api = runtime()
        self._buffers: list = []
        self.handle = check(self._api.cudaStreamCreate())

    @property
    def native(self) -> int:
        """The stream as the integer handle that TensorRT's ``execute_async_v3`` takes."""
        return native_handle(self.handle)

    def malloc(self, nbytes: int) -> int:
        """A device buffer of ``nbytes``, freed by ``close``."""
        pointer = check(self._api.cudaMalloc(nbytes))
        self._buffers.append(pointer)
        return int(pointer)

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        """Enqueue the copy of the contiguous ``array`` into the buffer at ``pointer``."""
        kind = self._api.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self._api.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self.handle))

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        """Enqueue the copy of the buffer at ``pointer`` into the contiguous ``array`` (valid after synchronize)."""
        kind = self._api.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self._api.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self.handle))

    def synchronize(self) -> None:
        check(self._api.cudaStreamSynchronize(self.handle))

    def close(self) -> None:
        """Free the buffers and destroy the stream; errors are ignored (the process may be shutting down)."""
        for pointer in self._buffers:
            self._api.cudaFree(pointer)
        self._buffers = []
        if getattr(self, "handle", None) is not None:
            self._api.cudaStreamDestroy(self.handle)
            self.handle = None

    def __del__(self) -> None:
        if hasattr(self, "_api"):
            self.close()
