"""Torch-free runtime: image and video segmentation and the shared pieces the training pipeline reuses.

Nothing under ``wsvs.runtime`` may import torch: an edge device carries numpy, OpenCV, ONNX Runtime,
TensorRT, cuda-python and PyMaxflow, nothing heavier.

``from wsvs.runtime import Segmenter`` is the Python API (``wsvs.runtime.api``), imported on first use so that the
command line and the pieces the training pipeline reuses do not load it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsvs")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"


def __getattr__(name: str):
    if name in ("Segmenter", "Result"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
