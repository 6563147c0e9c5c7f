"""Inference backends, in one table (``BACKENDS``): TensorRT engines, ONNX Runtime (CUDA or CPU provider) and the
checkpoint itself in PyTorch eager mode.

A model is a checkpoint (folder with ``model.safetensors`` + ``model.json``, or one ``X.pt``) and the graphs exported
beside it (``X.onnx`` the end-to-end segmenter, ``X.encoder.onnx`` and ``X.decoder.onnx`` for videos, ``X*.engine``
with JSON sidecars), named by any of those paths. Every backend takes a float32 NCHW array and returns the graph's
outputs by name, with the graph's metadata (class names, mean, std, ...), so every caller (`wsvs segment`, `bench`,
`doctor`, `export --verify`, the Python API) runs images and videos on any of them alike.

Adding a backend is one module (a ``Backend`` subclass) and one row of ``BACKENDS``. ``tensorrt``, ``cuda.bindings``
and torch are imported only when their backend is opened, so this module works on a machine that has none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cuda_api
from .contract import METADATA_FILE, check_exported_from, checkpoint_path
from .errors import InputError, StaleExportError, first_line
from .io import read_json

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

    name: str  # its row in BACKENDS
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
        check_exported_from(path, self.metadata)
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
        check_exported_from(path, self.metadata)
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


def _has_checkpoint(path: Path) -> bool:
    return path.is_file() if path.suffix == ".pt" else (path / METADATA_FILE).is_file()


def importable(module: str) -> bool:
    """Whether ``module`` can be imported here, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):  # sys.modules[module] is None: imports of it are blocked
        return False


def _tensorrt_unavailable() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"TensorRT is not installed ({cuda_api.INSTALL})"
    except Exception as error:  # a broken install raises while loading its libraries
        return f"TensorRT does not load ({first_line(error)})"
    try:
        cuda_api.device_name()
    except cuda_api.CudaError as error:
        return str(error)
    return None


def _ort_unavailable(provider: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            providers = import_onnxruntime().get_available_providers()
        except InputError as error:
            return str(error)
        return None if provider in providers else f"this ONNX Runtime has no {provider}"

    return check


def _eager_unavailable() -> str | None:
    return None if importable("torch") else "PyTorch is not installed (pip install 'wsvs[train]')"


def _open_eager(model: str | Path, graph: str, threads: int) -> Backend:
    # The one backend that needs torch, which the runtime never imports: its module is loaded only when opened.
    eager = importlib.import_module("wsvs.training.eager")
    return eager.EagerBackend(checkpoint_path(model), graph, threads)


@dataclass(frozen=True)
class BackendEntry:
    """One row of ``BACKENDS``: what a backend runs and how to open it."""

    name: str
    summary: str  # what it runs, for --help and `wsvs doctor`
    file: Callable[[str | Path, str], Path]  # (model, graph) -> the file it loads
    open: Callable[[str | Path, str, int], Backend]  # (model, graph, intra-op threads; 0: the library's default)
    unavailable: Callable[[], str | None]  # why this machine cannot run it at all, None when it may


# Every backend, fastest first: the order "auto" tries them in.
BACKENDS: dict[str, BackendEntry] = {entry.name: entry for entry in (
    BackendEntry("tensorrt", "TensorRT engine X.engine built on this machine (wsvs export --out-engine)",
                 lambda model, graph: graph_file(model, graph, ".engine"),
                 lambda model, graph, threads: TensorRTBackend(graph_file(model, graph, ".engine")),
                 _tensorrt_unavailable),
    BackendEntry("ort-cuda", "ONNX graph X.onnx on ONNX Runtime's CUDA provider (onnxruntime-gpu)",
                 lambda model, graph: graph_file(model, graph, ".onnx"),
                 lambda model, graph, threads: OnnxRuntimeBackend(graph_file(model, graph, ".onnx"), "ort-cuda",
                                                                  threads),
                 _ort_unavailable("CUDAExecutionProvider")),
    BackendEntry("ort-cpu", "ONNX graph X.onnx on ONNX Runtime's CPU provider",
                 lambda model, graph: graph_file(model, graph, ".onnx"),
                 lambda model, graph, threads: OnnxRuntimeBackend(graph_file(model, graph, ".onnx"), "ort-cpu",
                                                                  threads),
                 _ort_unavailable("CPUExecutionProvider")),
    BackendEntry("pytorch-eager", "the checkpoint (folder or X.pt) in PyTorch (the train extra), on CUDA if it can",
                 lambda model, graph: checkpoint_path(model), _open_eager, _eager_unavailable),
)}
EAGER = "pytorch-eager"  # the baseline `wsvs bench` compares the others with
ALIASES = {"pytorch": EAGER}  # names users had


def backend_name(text: str) -> str:
    """A backend name as given on a command line: "auto", a row of ``BACKENDS`` or an alias of one."""
    name = ALIASES.get(text, text)
    if name != "auto" and name not in BACKENDS:
        raise InputError(None, f"unknown backend {text!r} (choose auto, {', '.join(BACKENDS)})")
    return name


def backends_help() -> str:
    """The backends for --help: "auto" and the table's rows in auto's order."""
    return f"auto (default): the first of {', '.join(BACKENDS)} that opens the model"


def open_backend(model: str | Path, graph: str, name: str, threads: int = 0) -> Backend:
    """Load ``graph`` ("segmenter", "encoder", "decoder") of ``model`` on the backend ``name`` (a row of
    BACKENDS). Exported graphs beside a checkpoint other than the one they came from are refused
    (``contract.check_exported_from``)."""
    return BACKENDS[backend_name(name)].open(model, graph, threads)


def select_backend(name: str, model: str | Path, graph: str = "segmenter", threads: int = 0) -> Backend:
    """``name`` is a backend, or "auto": the first of BACKENDS whose file for ``model`` is there and loads here.
    The returned backend's ``selection`` says which one auto chose and why the ones before it were skipped; when
    none loads, the error is that of the last backend whose file was there. A stale export is an error at once."""
    if backend_name(name) != "auto":
        return open_backend(model, graph, name, threads)
    skipped: list[str] = []
    failure: InputError | None = None
    for entry in BACKENDS.values():
        path = entry.file(model, graph)
        if not (path.is_file() or _has_checkpoint(path)):
            skipped.append(f"{entry.name} unavailable (no {path.name})")
            continue
        try:
            backend = entry.open(model, graph, threads)
        except StaleExportError:
            raise  # the model's files disagree: running another backend's would hide it
        except InputError as exc:
            skipped.append(f"{entry.name} unavailable ({exc})")
            failure = exc
            continue
        backend.selection = "; ".join([f"backend auto: {backend.describe()}", *skipped])
        return backend
    raise failure or InputError(model, "no exported graph or checkpoint here (export one with: wsvs-export "
                                       "CHECKPOINT.pt, or give a checkpoint)")
