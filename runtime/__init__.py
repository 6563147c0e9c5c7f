"""Torch-free runtime: image and video segmentation and the shared pieces the training pipeline reuses.

Nothing under ``wsvs.runtime`` may import torch: an edge device carries numpy, OpenCV, ONNX Runtime,
TensorRT, cuda-python and PyMaxflow, nothing heavier.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsvs")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
