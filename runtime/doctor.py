"""`wsvs doctor`: what this machine can run, and for each part that it cannot, why.

One line per part of the GPU stack (Python, numpy, ONNX Runtime and its providers, the CUDA driver and GPU, NVRTC,
TensorRT, CuPy), then one line per backend of ``wsvs.runtime.backends.BACKENDS`` (whether this machine can run it,
and why not), the order ``--backend auto`` tries them in, and with ``--model`` the one it picks for that model, by
opening it the way ``wsvs segment`` does. Torch-free, like the rest of the
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
from .backends import BACKENDS, import_onnxruntime, select_backend
from .errors import InputError, first_line

NAME_WIDTH = 22  # the first column: "backend pytorch-eager" fits


@dataclass(frozen=True)
class Check:
    """One part of the stack: usable or not, with its version or the reason it is not usable."""

    name: str
    usable: bool
    detail: str

    def line(self) -> str:
        return f"{self.name:{NAME_WIDTH}s} {'yes' if self.usable else 'no '}  {self.detail}"


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


def backend_checks() -> list[Check]:
    """One check per row of ``BACKENDS``, in auto's order: whether this machine can run it at all."""
    checks = []
    for entry in BACKENDS.values():
        why = entry.unavailable()
        checks.append(Check(entry.name, why is None, entry.summary if why is None else why))
    return checks


def report(model: Path | None) -> tuple[list[str], bool]:
    """The report's lines, and whether some backend can run."""
    import numpy

    onnxruntime, _ = check_onnxruntime()
    gpu = check_gpu()
    checks = [
        Check("python", True, f"{platform.python_version()} ({sys.executable})"),
        Check("numpy", True, numpy.__version__),
        onnxruntime,
        gpu,
        check_nvrtc(),
        check_tensorrt(),
        check_cupy(),
    ]
    lines = [check.line() for check in checks]
    if gpu.usable:
        major = int(cuda_api.driver_version().split(".")[0])
        extra = "gpu-cu13" if major >= 13 else "gpu-cu12"
        lines.append(f"{'extra':{NAME_WIDTH}s} this driver runs CUDA {major}: pip install 'wsvs[{extra}]'")
    backends = backend_checks()
    lines += [Check(f"backend {check.name}", check.usable, check.detail).line() for check in backends]
    usable = [check.name for check in backends if check.usable]
    order = ", ".join(usable) or "nothing: no backend can run here"
    lines.append(f"{'auto':{NAME_WIDTH}s} tries {order} in this order (the first whose file the model has)")
    if model is not None:
        try:
            lines.append(f"{'model':{NAME_WIDTH}s} {select_backend('auto', model).selection}")
        except InputError as error:
            lines.append(f"{'model':{NAME_WIDTH}s} no backend opens it: {error}")
            return lines, False
    return lines, bool(usable)


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
