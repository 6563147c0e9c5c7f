"""`wsvs doctor`: what this machine can run, and for each part that it cannot, why.

One line per part of the GPU stack (Python, numpy, ONNX Runtime and its providers, the CUDA driver and GPU, NVRTC,
TensorRT, CuPy), then the backend that ``--backend auto`` picks and why the faster ones are skipped: from what is
installed, or, with ``--model``, by opening the model the way ``wsvs segment`` does. Torch-free, like the rest of the
runtime; every probe catches its own failure, so the report is complete on any machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import cuda_api
from .backends import import_onnxruntime, select_backend
from .errors import InputError, first_line


@dataclass(frozen=True)
class Check:
    """One part of the stack: usable or not, with its version or the reason it is not usable."""

    name: str
    usable: bool
    detail: str

    def line(self) -> str:
        return f"{self.name:12s} {'yes' if self.usable else 'no '}  {self.detail}"


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_onnxruntime() -> tuple[Check, list[str]]:
    """ONNX Runtime and its execution providers (empty when it is not importable)."""
    both = [name for name in ("onnxruntime", "onnxruntime-gpu") if installed_version(name)]
    clash = ("; onnxruntime and onnxruntime-gpu are both installed and share one folder, so either may be the one "
             "that runs: pip uninstall -y onnxruntime onnxruntime-gpu, then install one wsvs extra"
             if len(both) == 2 else "")
    try:
        ort = import_onnxruntime()
    except InputError as error:
        return Check("onnxruntime", False, f"{error}{clash}"), []
    providers = list(ort.get_available_providers())
    return Check("onnxruntime", True, f"{ort.__version__} ({', '.join(providers)}){clash}"), providers


def check_gpu() -> Check:
    """The CUDA driver (through cuda-python) and GPU 0."""
    try:
        return Check("cuda driver", True, f"CUDA {cuda_api.driver_version()}, GPU 0: {cuda_api.device_name()}")
    except cuda_api.CudaError as error:
        return Check("cuda driver", False, str(error))


def check_nvrtc() -> Check:
    """NVRTC, which compiles the CUDA kernels at first use."""
    try:
        _, major, minor = cuda_api.nvrtc().nvrtcVersion()
    except Exception as error:  # cuda-python raises its own loader errors when the NVRTC library is missing
        return Check("nvrtc", False, f"{first_line(error)} (the gpu extras install it)")
    return Check("nvrtc", True, f"{major}.{minor}")


def check_tensorrt() -> Check:
    try:
        import tensorrt
    except ImportError:
        return Check("tensorrt", False, f"not installed ({cuda_api.INSTALL})")
    except Exception as error:  # a broken install raises while loading its libraries
        return Check("tensorrt", False, f"installed but does not load: {first_line(error)}")
    return Check("tensorrt", True, tensorrt.__version__)


def check_cupy() -> Check:
    try:
        import cupy
    except ImportError:
        return Check("cupy", False, "not installed (optional: make gpu-check measures the copy bandwidth with it)")
    except Exception as error:
        return Check("cupy", False, f"installed but does not load: {first_line(error)}")
    return Check("cupy", True, cupy.__version__)


def auto_choice(onnxruntime: Check, providers: list[str], gpu: Check, tensorrt: Check) -> str:
    """The backend "auto" picks given what is installed, and why the faster ones are skipped."""
    cuda_provider = "CUDAExecutionProvider" in providers
    if gpu.usable and tensorrt.usable:
        fallback = "ort-cuda" if cuda_provider else "ort-cpu"
        return f"tensorrt for a model with engines built on this machine (wsvs export --out-engine), else {fallback}"
    skipped = ["tensorrt is not usable" if gpu.usable else "tensorrt and ort-cuda need a usable CUDA driver and GPU"]
    if gpu.usable and cuda_provider:
        return "; ".join(["ort-cuda", *skipped])
    if gpu.usable:
        skipped.append("ort-cuda: this ONNX Runtime has no CUDA provider")
    if onnxruntime.usable:
        return "; ".join(["ort-cpu", *skipped])
    return "; ".join(["none: no backend can run (install wsvs[cpu] at least)", *skipped])


def report(model: Path | None) -> tuple[list[str], bool]:
    """The report's lines, and whether some backend can run."""
    import numpy

    onnxruntime, providers = check_onnxruntime()
    gpu, tensorrt = check_gpu(), check_tensorrt()
    checks = [
        Check("python", True, f"{platform.python_version()} ({sys.executable})"),
        Check("numpy", True, numpy.__version__),
        onnxruntime,
        gpu,
        check_nvrtc(),
        tensorrt,
        check_cupy(),
    ]
    lines = [check.line() for check in checks]
    if gpu.usable:
        major = int(cuda_api.driver_version().split(".")[0])
        extra = "gpu-cu13" if major >= 13 else "gpu-cu12"
        lines.append(f"{'extra':12s} this driver runs CUDA {major}: pip install 'wsvs[{extra}]'")
    lines.append(f"{'auto':12s} {auto_choice(onnxruntime, providers, gpu, tensorrt)}")
    if model is not None:
        try:
            lines.append(f"{'model':12s} {select_backend('auto', model).selection}")
        except InputError as error:
            lines.append(f"{'model':12s} no backend opens it: {error}")
            return lines, False
    return lines, onnxruntime.usable


HELP = "what this machine can run (ONNX Runtime providers, CUDA, NVRTC, TensorRT) and which backend auto picks"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help=HELP, description=HELP + ". Exit status 1 when no backend can run.")
    parser.add_argument("--model", type=Path, default=None,
                        help="an exported model (folder or .onnx/.engine): open it as `wsvs segment` would and say "
                        "which backend auto picks for it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    lines, runnable = report(args.model)
    print("\n".join(lines))
    return 0 if runnable else 1
