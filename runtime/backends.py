"""Inference backends for the exported graphs: ONNX Runtime (CPU or CUDA provider) and TensorRT engines.

A model is a folder holding ``model.onnx`` (end-to-end segmenter), ``model.encoder.onnx`` and
``model.decoder.onnx`` (and, when built, ``model*.engine`` with JSON sidecars), or the path of one of
those segmenter files; the encoder and decoder graphs sit beside it. Every backend takes a float32 NCHW
array and returns the graph's outputs by name, with the graph's metadata (class names, mean, std, ...).

``tensorrt`` and ``cuda.bindings`` (through ``cuda_api``) are imported only when a TensorRT backend is opened,
so this module works on a machine that has neither.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import cuda_api
from .contract import check_exported_from
from .errors import InputError, first_line
from .io import read_json

BACKENDS = ("tensorrt", "ort-cuda", "ort-cpu")  # fastest first: the order "auto" tries them in
# The checkpoint run by PyTorch itself (training extra): the name `wsvs segment` and `wsvs bench` give it.
EAGER = "pytorch-eager"
GRAPH_SUFFIX = {"segmenter": "", "encoder": ".encoder", "decoder": ".decoder"}
# Graph input shapes change from call to call (images at their own sizes): cuDNN's default exhaustive search would
# benchmark every convolution again for each new shape; its heuristic picks an algorithm without running any.
_CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
_ORT_PROVIDERS = {"ort-cpu": ["CPUExecutionProvider"],
                  "ort-cuda": [("CUDAExecutionProvider", _CUDA_OPTIONS), "CPUExecutionProvider"]}
ORT_INSTALL = "pip install 'wsvs[cpu]', or 'wsvs[gpu-cu12]' / 'wsvs[gpu-cu13]' on a machine with an NVIDIA GPU"


def import_onnxruntime():
    """The ``onnxruntime`` module, or an InputError saying in one line that no ONNX Runtime is installed."""
    try:
        import onnxruntime
    except ImportError:
        raise InputError(None, f"ONNX Runtime is not installed ({ORT_INSTALL})") from None
    return onnxruntime


def graph_file(model: str | Path, graph: str, suffix: str) -> Path:
    """The file of ``graph`` ("segmenter", "encoder", "decoder") with ``suffix`` (".onnx" or ".engine") for a
    model folder (``model.onnx``, ``model.encoder.onnx``, ...) or the segmenter file ``X.onnx``/``X.engine``."""
    model = Path(model)
    if model.is_dir():
        folder, stem = model, "model"
    else:
        folder, stem = model.parent, model.name.removesuffix(model.suffix)
    return folder / f"{stem}{GRAPH_SUFFIX[graph]}{suffix}"


class Backend(ABC):
    """One loaded graph on one backend."""

    name: str  # one of BACKENDS
    path: Path
    metadata: dict[str, str]  # the graph's metadata_props as strings: contract.GraphMetadata.from_props parses them
    max_batch: int | None = None  # the largest batch one call accepts; None: any
    profile: tuple[tuple[int, ...], ...] | None = None  # an engine's (min, opt, max) input shapes; None: any
    selection: str = ""  # why "auto" chose this backend (empty when it was named)

    @abstractmethod
    def run(self, inputs: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph on float32 NCHW ``inputs``; the outputs named in ``outputs`` (None: all) by name. Only
        those are copied back from the GPU."""

    @abstractmethod
    def describe(self) -> str:
        """One line: backend, library version, device."""


class OnnxRuntimeBackend(Backend):
    """An ONNX graph in an ONNX Runtime session on the CPU or the CUDA execution provider."""

    def __init__(self, path: Path, name: str = "ort-cpu", threads: int = 0) -> None:
        ort = import_onnxruntime()
        if name not in _ORT_PROVIDERS:
            raise InputError(None, f"ONNX Runtime backends are {', '.join(_ORT_PROVIDERS)}, got {name!r}")
        if name == "ort-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(None, f"this ONNX Runtime ({ort.__version__}) has no CUDA provider: onnxruntime-gpu is "
                                   "missing, or the CPU package onnxruntime was installed over it (pip uninstall "
                                   "onnxruntime onnxruntime-gpu, then pip install 'wsvs[gpu-cu12]' or 'gpu-cu13')")
        if not path.is_file():
            raise InputError(path, "ONNX graph not found (export it with: wsvs export --model CHECKPOINT)")
        if name == "ort-cuda" and hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21
            ort.preload_dlls()  # the CUDA runtime and cuDNN of the nvidia-* wheels that the gpu extras install
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=_ORT_PROVIDERS[name])
        except Exception as exc:  # ORT raises its own exception types for unreadable or invalid graphs
            raise InputError(path, f"ONNX Runtime cannot load the graph ({first_line(exc)})") from None
        if name == "ort-cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise InputError(path, "the CUDA provider failed to start (no usable GPU or CUDA libraries)")
        self.name, self.path, self.version = name, path, ort.__version__
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.input_dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_names)
        values = self.session.run(names, {self.input_name: inputs.astype(self.input_dtype, copy=False)})
        return dict(zip(names, values))

    def describe(self) -> str:
        return f"{self.name} (ONNX Runtime {self.version}, {self.session.get_providers()[0]})"


def check_engine_sidecar(engine: Path, sidecar: dict, tensorrt_version: str, gpu: str) -> None:
    """An engine runs only on the GPU model and TensorRT version it was built with: compare its sidecar."""
    built_version, built_gpu = sidecar.get("tensorrt_version"), sidecar.get("gpu")
    if built_version != tensorrt_version:
        raise InputError(engine, f"engine built with TensorRT {built_version}, this is TensorRT {tensorrt_version}: "
                                 "rebuild it with wsvs export --out-engine on this machine")
    if built_gpu != gpu:
        raise InputError(engine, f"engine built for {built_gpu}, this GPU is {gpu}: "
                                 "rebuild it with wsvs export --out-engine on this machine")


class TensorRTBackend(Backend):
    """A serialised TensorRT 10/11 engine, run on device buffers allocated once for the profile's largest
    shape, with host copies and execution on one CUDA stream (``cuda_api.Stream``)."""

    name = "tensorrt"

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise InputError(path, "TensorRT engine not found "
                             "(build it with: wsvs export --model CHECKPOINT --out-engine E)")
        sidecar = read_json(path.with_name(path.name + ".json"))
        try:
            import tensorrt as trt
        except ImportError:
            raise InputError(None, f"TensorRT is not installed ({cuda_api.INSTALL}), use --backend ort-cpu") from None
        check_engine_sidecar(path, sidecar, trt.__version__, cuda_api.device_name())
        self.path = path
        self.metadata = dict(sidecar.get("metadata", {}))
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        except TypeError as exc:  # "factory function returned nullptr": TensorRT could not start CUDA
            raise InputError(path, f"TensorRT cannot start on this GPU ({first_line(exc)})") from None
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise InputError(path, "TensorRT cannot deserialise the engine (corrupt file?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise InputError(path, "TensorRT cannot create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in names if n != self.input_name]
        self.profile = self.engine.get_tensor_profile_shape(self.input_name, 0)  # (min, opt, max)
        self.max_batch = int(self.profile[2][0])
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = cuda_api.Stream()
        # Buffers sized for the largest input shape serve every smaller one.
        self._set_input_shape(tuple(self.profile[2]))
        self.buffers = {}
        for name in names:
            size = int(np.prod(self.context.get_tensor_shape(name))) * self.dtypes[name].itemsize
            self.buffers[name] = self.stream.malloc(size)
            self.context.set_tensor_address(name, self.buffers[name])

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        low, _, high = self.profile
        if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            text = "x".join(map(str, shape))
            raise InputError(self.path, f"input shape {text} is outside the engine's profile "
                                        f"{'x'.join(map(str, low))} .. {'x'.join(map(str, high))}")

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(self.input_name, shape):
            raise InputError(self.path, f"TensorRT refuses the input shape {'x'.join(map(str, shape))}")

    def run(self, inputs: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        inputs = np.ascontiguousarray(inputs, dtype=self.dtypes[self.input_name])
        self._check_shape(inputs.shape)
        self._set_input_shape(inputs.shape)
        self.stream.to_device(self.buffers[self.input_name], inputs)
        if not self.context.execute_async_v3(self.stream.native):
            raise InputError(self.path, "TensorRT failed to run the engine")
        results = {}
        for name in outputs or self.output_names:
            results[name] = np.empty(tuple(self.context.get_tensor_shape(name)), self.dtypes[name])
            self.stream.to_host(results[name], self.buffers[name])
        self.stream.synchronize()
        return results

    def describe(self) -> str:
        sidecar = read_json(self.path.with_name(self.path.name + ".json"))
        return f"tensorrt (TensorRT {sidecar['tensorrt_version']}, {sidecar['gpu']}, {sidecar['precision']})"

    def __del__(self) -> None:
        if hasattr(self, "stream"):
            self.stream.close()


def open_backend(model: str | Path, graph: str, name: str, threads: int = 0) -> Backend:
    """Load ``graph`` of ``model`` on the backend ``name`` (one of BACKENDS). A graph beside a checkpoint other
    than the one it was exported from is refused (``contract.check_exported_from``)."""
    if name == "tensorrt":
        backend: Backend = TensorRTBackend(graph_file(model, graph, ".engine"))
    elif name in _ORT_PROVIDERS:
        backend = OnnxRuntimeBackend(graph_file(model, graph, ".onnx"), name, threads)
    else:
        raise InputError(None, f"unknown backend {name!r} (choose auto, {', '.join(BACKENDS)})")
    check_exported_from(backend.path, backend.metadata)
    return backend


def select_backend(name: str, model: str | Path, graph: str = "segmenter", threads: int = 0) -> Backend:
    """``name`` is a backend, or "auto": the fastest that loads here (TensorRT, then ONNX Runtime CUDA, then
    CPU). The returned backend's ``selection`` says which one auto chose and why the faster ones were skipped."""
    if name != "auto":
        return open_backend(model, graph, name, threads)
    skipped = []
    for candidate in BACKENDS[:-1]:
        try:
            backend = open_backend(model, graph, candidate, threads)
            break
        except InputError as exc:
            skipped.append(f"{candidate} unavailable ({exc})")
    else:
        backend = open_backend(model, graph, BACKENDS[-1], threads)
    backend.selection = "; ".join([f"backend auto: {backend.describe()}", *skipped])
    return backend
