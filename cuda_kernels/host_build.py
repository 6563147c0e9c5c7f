"""Host build of a CUDA source: compile it with g++ through host_shim.h and run its kernels on the CPU.

The same .cu text the GPU runs is compiled into a shared library whose kernels run as a sequential
simulation of the launch (see host_shim.h), so a CPU machine checks the kernels' logic, barriers included.
Libraries are cached by the hash of the source, the shim and the build command in the temp folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsvs.runtime.io import atomic_path

SHIM = Path(__file__).with_name("host_shim.h")
CACHE_DIR = Path(tempfile.gettempdir()) / "wsvs-host-kernels"

# One kernel parameter: its value and its C type, as cuLaunchKernel's kernelParams expects.
KernelParam = tuple[int | float, type]


def pack_params(params: Sequence[KernelParam]) -> tuple[ctypes.Array, list]:
    """Lay out kernel parameters as a ``void*[]`` of pointers to each value; keep the second item alive."""
    values = [ctype(value) for value, ctype in params]
    pointers = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
    return pointers, values


def build_host_library(source: Path, kernels_macro: str, shared_name: str, shared_bytes: int) -> Path:
    """Compile ``source`` for the host; return the cached shared library's path.

    ``kernels_macro`` names the source's X-macro listing its kernels, ``shared_name`` its
    ``extern __shared__ double`` array, ``shared_bytes`` that array's capacity on the host.
    """
    export = f"WSVS_HOST_EXPORT({kernels_macro}, {shared_name}, {shared_bytes})\n"
    compiler = os.environ.get("CXX", "g++")
    command = [compiler, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-x", "c++", "-"]
    digest = hashlib.sha256()
    for part in (source.read_bytes(), SHIM.read_bytes(), export.encode(), " ".join(command).encode()):
        digest.update(part)
    library = CACHE_DIR / f"{source.stem}-{digest.hexdigest()[:16]}.so"
    if not library.exists():
        unit = f'#include "{SHIM}"\n#include "{source}"\n{export}'
        with atomic_path(library) as tmp:
            result = subprocess.run([*command, "-o", str(tmp)], input=unit, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"host build of {source} failed:\n{result.stderr}")
    return library


class HostExecutor:
    """Runs kernels of a host-built library on numpy memory; the executor interface of the GPU loader."""

    def __init__(self, library: Path, shared_budget: int, min_blocks: int) -> None:
        self.shared_budget = shared_budget
        self.min_blocks = min_blocks
        self._library = ctypes.CDLL(str(library))
        self._library.wsvs_host_launch.restype = ctypes.c_int
        self._library.wsvs_host_launch.argtypes = [
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_size_t,
            ctypes.c_void_p,
        ]
        self._buffers: dict[int, np.ndarray] = {}

    def _keep(self, buffer: np.ndarray) -> int:
        pointer = buffer.ctypes.data
        self._buffers[pointer] = buffer
        return pointer

    def upload(self, array: np.ndarray) -> int:
        return self._keep(np.ascontiguousarray(array).reshape(-1).view(np.uint8).copy())

    def zeros(self, nbytes: int) -> int:
        return self._keep(np.zeros(max(nbytes, 1), dtype=np.uint8))

    def download(self, pointer: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return self._buffers[pointer][:nbytes].view(dtype).reshape(shape).copy()

    def free(self, pointer: int) -> None:
        del self._buffers[pointer]

    def launch(
        self, kernel: str, grid: tuple[int, int, int], threads: int, shared_bytes: int, params: Sequence[KernelParam]
    ) -> None:
        pointers, _alive = pack_params(params)
        status = self._library.wsvs_host_launch(
            kernel.encode(),
            (ctypes.c_uint * 3)(*grid),
            (ctypes.c_uint * 3)(threads, 1, 1),
            shared_bytes,
            ctypes.addressof(pointers),
        )
        if status != 0:
            problem = {1: "divergent __syncthreads()", 2: "too much shared memory", 3: "unknown kernel"}[status]
            raise RuntimeError(f"host launch of {kernel} failed: {problem}")
