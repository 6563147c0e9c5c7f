"""The GPU environment without a GPU: the install extras, backend "auto" falling back when TensorRT or CUDA fail
(fault injection through stand-in ``tensorrt`` modules, CUDA streams and ONNX Runtime providers), and
`wsvs doctor`. Torch-free and fast."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from wsvs.runtime import cuda_api, doctor
from wsvs.runtime.backends import BACKENDS, open_backend, select_backend
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import write_json

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
GPU = "NVIDIA Stand-in GPU"
TRT_VERSION = "10.13.0"
PROFILE = [(1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 64, 64)]


# ---- the extras ----

# onnxruntime-gpu on PyPI: CUDA 11 builds before 1.19, CUDA 12 from 1.19 to 1.26, CUDA 13 from 1.27 (the CUDA
# wheels its "cuda" extra requires, read from PyPI's metadata on 2026-11-29).
def onnxruntime_gpu_cuda(minor: int) -> int:
    return 11 if minor < 19 else 12 if minor < 27 else 13


def cuda_majors(requirement: Requirement) -> set[int | str]:
    """The CUDA majors a requirement can install: from a -cuXX name, from the version of a package versioned by
    CUDA release (cuda-python, the unsuffixed nvidia-cuda-nvrtc of CUDA 13 on), or from onnxruntime-gpu's build
    table; "tensorrt" for the unsuffixed tensorrt package, which follows the newest CUDA."""
    name = canonicalize_name(requirement.name)
    suffix = re.search(r"-cu(\d+)$", name)
    if suffix:
        return {int(suffix.group(1))}
    allowed = requirement.specifier.contains
    if name in ("cuda-python", "cuda-bindings", "nvidia-cuda-nvrtc"):
        probes = [f"{major}.{minor}.{patch}" for major in range(11, 15) for minor in range(10) for patch in (0, 10, 99)]
        return {int(version.split(".")[0]) for version in probes if allowed(version)}
    if name == "onnxruntime-gpu":
        return {onnxruntime_gpu_cuda(minor) for minor in range(15, 60) for patch in (0, 1, 2)
                if allowed(f"1.{minor}.{patch}")}
    if name == "tensorrt":
        return {"tensorrt"}
    return set()


def extra_problems(requirements: list[str]) -> list[str]:
    """What is wrong with one extra: several CUDA majors, or both ONNX Runtime packages."""
    parsed = [Requirement(text) for text in requirements]
    majors = set().union(*(cuda_majors(r) for r in parsed))
    problems = [f"CUDA majors {sorted(map(str, majors))}"] if len(majors) > 1 or "tensorrt" in majors else []
    names = {canonicalize_name(r.name) for r in parsed}
    if {"onnxruntime", "onnxruntime-gpu"} <= names:
        problems.append("both onnxruntime and onnxruntime-gpu")
    return problems


def test_each_extra_names_one_cuda_major_and_one_onnxruntime():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"cpu", "gpu-cu12", "gpu-cu13"} <= set(extras)
    for name, requirements in extras.items():
        assert extra_problems(requirements) == [], name
    for name, major in (("gpu-cu12", 12), ("gpu-cu13", 13)):
        parsed = [Requirement(text) for text in extras[name]]
        assert set().union(*(cuda_majors(r) for r in parsed)) == {major}, name
        assert {"onnxruntime-gpu", "cuda-python"} <= {canonicalize_name(r.name) for r in parsed}, name
    # Neither ONNX Runtime package in the base install: each extra brings its own, and they would share a folder.
    assert not {canonicalize_name(Requirement(r).name) for r in project["dependencies"]} & {"onnxruntime",
                                                                                            "onnxruntime-gpu"}
    assert [canonicalize_name(Requirement(r).name) for r in extras["cpu"]] == ["onnxruntime"]
    # The test install has ONNX Runtime and no GPU extra.
    installed = re.search(r"pip install --quiet -e '\.\[([\w,-]+)\]'", (REPO / "Makefile").read_text())
    assert installed and "cpu" in installed[1].split(",") and not any(
        extra.startswith("gpu") for extra in installed[1].split(","))


def test_the_extra_check_finds_the_old_mixed_gpu_extra():
    old = ["tensorrt>=10", "onnxruntime-gpu>=1.17", "cuda-python==12.9.10", "nvidia-cuda-nvrtc-cu12==12.9.86"]
    assert extra_problems(old) == ["CUDA majors ['11', '12', '13', 'tensorrt']"]
    assert extra_problems(["onnxruntime>=1.17", "onnxruntime-gpu>=1.20,<1.27"]) == ["both onnxruntime and "
                                                                                    "onnxruntime-gpu"]
    assert extra_problems(["tensorrt-cu12>=10.13,<12", "nvidia-cuda-nvrtc>=13,<14"]) == ["CUDA majors ['12', '13']"]


# ---- backends under fault injection ----


def write_tiny_model(folder: Path) -> Path:
    """A three-output graph in the segmenter's shape (scores, probs, labels) that ONNX Runtime runs on the CPU."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3]),
               helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3, "H", "W"]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", "H", "W"])]
    nodes = [helper.make_node("ReduceMean", ["images"], ["scores"], axes=[2, 3], keepdims=0),
             helper.make_node("Sigmoid", ["images"], ["probs"]),
             helper.make_node("ArgMax", ["images"], ["labels"], axis=1, keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [images], outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


class StandInStream:
    """cuda_api.Stream without a GPU: records which buffers are copied back."""

    native = 1234

    def __init__(self) -> None:
        self.copied: list[int] = []

    def malloc(self, nbytes: int) -> int:
        return nbytes

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        pass

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        self.copied.append(pointer)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


def stand_in_tensorrt(runtime_fails: bool = False, no_context: bool = False, shape_refused: bool = False):
    """A ``tensorrt`` module with TensorRT 10's Python API for one engine, and the faults to inject."""
    shapes = {"images": (3, 64, 64), "scores": (3,), "labels": (64, 64)}

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Context:
        batch = 0
        stream = None

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.batch = shape[0]
            return not shape_refused

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.batch, *shapes[name])

        def set_tensor_address(self, name: str, pointer: int) -> None:
            pass

        def execute_async_v3(self, stream: int) -> bool:
            self.stream = stream
            return True

    class Engine:
        num_io_tensors = len(shapes)

        def get_tensor_name(self, index: int) -> str:
            return list(shapes)[index]

        def get_tensor_mode(self, name: str) -> str:
            return "input" if name == "images" else "output"

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return PROFILE

        def get_tensor_dtype(self, name: str) -> type:
            return np.int32 if name == "labels" else np.float32

        def create_execution_context(self) -> Context | None:
            return None if no_context else Context()

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            if runtime_fails:  # what TensorRT's binding raises when CUDA cannot start
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            return Engine() if data == b"engine" else None

    return types.SimpleNamespace(__version__=TRT_VERSION, Logger=Logger, Runtime=Runtime, nptype=lambda t: t,
                                 TensorIOMode=types.SimpleNamespace(INPUT="input"))


@pytest.fixture
def model(tmp_path, monkeypatch) -> Path:
    """A model folder with an ONNX graph and an engine, on a machine whose ONNX Runtime has no CUDA provider and
    whose CUDA calls are stand-ins."""
    folder = write_tiny_model(tmp_path / "model")
    (folder / "model.engine").write_bytes(b"engine")
    write_json(folder / "model.engine.json", {"tensorrt_version": TRT_VERSION, "gpu": GPU, "precision": "fp16",
                                              "profile": {"min": PROFILE[0], "opt": PROFILE[1], "max": PROFILE[2]}})
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(cuda_api, "device_name", lambda device=0: GPU)
    monkeypatch.setattr(cuda_api, "Stream", StandInStream)
    return folder


def test_auto_runs_the_engine_and_copies_back_only_the_outputs_asked_for(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt())
    backend = select_backend("auto", model)
    assert backend.name == "tensorrt" and backend.max_batch == 2
    assert backend.selection == f"backend auto: tensorrt (TensorRT {TRT_VERSION}, {GPU}, fp16)"
    outputs = backend.run(np.zeros((2, 3, 48, 40), np.float32), ("labels",))
    assert list(outputs) == ["labels"] and outputs["labels"].shape == (2, 64, 64)
    assert backend.stream.copied == [backend.buffers["labels"]]  # no copy of the scores
    assert backend.context.stream == StandInStream.native  # the stream's native handle, not int(stream)
    with pytest.raises(InputError, match=r"input shape 4x3x48x40 is outside the engine's profile"):
        backend.run(np.zeros((4, 3, 48, 40), np.float32))


@pytest.mark.parametrize(("fault", "reason"), [
    ({"runtime_fails": True}, "TensorRT cannot start on this GPU (pybind11::init(): factory function returned"),
    ({"no_context": True}, "TensorRT cannot create an execution context (out of GPU memory?)"),
    ({"shape_refused": True}, "TensorRT refuses the input shape 2x3x64x64"),
    ({"other_gpu": True}, f"engine built for NVIDIA A100, this GPU is {GPU}"),
    ({"corrupt": True}, "TensorRT cannot deserialise the engine (corrupt file?)"),
    ({"missing": True}, "TensorRT is not installed"),
])
def test_auto_falls_back_to_onnxruntime_cpu_with_one_line_why(model, monkeypatch, fault, reason):
    module = None if fault.get("missing") else stand_in_tensorrt(
        **{k: v for k, v in fault.items() if k in ("runtime_fails", "no_context", "shape_refused")})
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    if fault.get("other_gpu"):
        write_json(model / "model.engine.json", {"tensorrt_version": TRT_VERSION, "gpu": "NVIDIA A100"})
    if fault.get("corrupt"):
        (model / "model.engine").write_bytes(b"truncated")
    with pytest.raises(InputError, match=re.escape(reason)) as caught:
        open_backend(model, "segmenter", "tensorrt")
    assert "\n" not in str(caught.value)
    backend = select_backend("auto", model)
    assert backend.name == "ort-cpu" and "\n" not in backend.selection
    assert backend.selection.startswith("backend auto: ort-cpu (ONNX Runtime")
    assert "tensorrt unavailable (" in backend.selection and reason in backend.selection
    assert "ort-cuda unavailable (this ONNX Runtime" in backend.selection
    labels = backend.run(np.random.default_rng(0).random((1, 3, 8, 8), np.float32), ("labels",))
    assert list(labels) == ["labels"] and labels["labels"].shape == (1, 8, 8)


def test_no_onnxruntime_at_all_is_one_line(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(InputError, match=r"^ONNX Runtime is not installed \(pip install 'wsvs\[cpu\]'") as caught:
        select_backend("auto", model)
    assert "\n" not in str(caught.value)


def test_cuda_provider_options_search_algorithms_by_heuristic():
    from wsvs.runtime import backends

    provider, options = backends._ORT_PROVIDERS["ort-cuda"][0]
    assert provider == "CUDAExecutionProvider" and options["cudnn_conv_algo_search"] == "HEURISTIC"


# ---- wsvs doctor ----


def doctor_lines(capsys, argv: list[str]) -> tuple[int, dict[str, str]]:
    from wsvs.runtime.cli import main

    code = main(["doctor", *argv])
    lines = capsys.readouterr().out.splitlines()
    return code, {line[:doctor.NAME_WIDTH].strip(): line[doctor.NAME_WIDTH:].strip() for line in lines}


def test_doctor_reports_each_part_and_what_auto_picks_without_a_gpu(model, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(cuda_api, "driver_version", raising_cuda_error("no usable CUDA driver (cuInit: NO_DEVICE)"))
    code, lines = doctor_lines(capsys, ["--model", str(model)])
    assert code == 0
    assert set(lines) == {"python", "numpy", "onnxruntime", "cuda driver", "nvrtc", "tensorrt", "cupy", "auto",
                          "model", *(f"backend {name}" for name in BACKENDS)}
    assert lines["onnxruntime"] == f"yes  {onnxruntime.__version__} (CPUExecutionProvider)"
    assert lines["cuda driver"] == "no   no usable CUDA driver (cuInit: NO_DEVICE)"
    assert lines["tensorrt"].startswith("no   not installed (pip install 'wsvs[gpu-cu12]'")
    assert lines["backend tensorrt"].startswith("no   TensorRT is not installed (pip install 'wsvs[gpu-cu12]'")
    assert lines["backend ort-cuda"] == "no   this ONNX Runtime has no CUDAExecutionProvider"
    assert lines["auto"] == "tries ort-cpu, pytorch-eager in this order (the first whose file the model has)"
    assert lines["model"].startswith("backend auto: ort-cpu (ONNX Runtime") and "tensorrt unavailable" in lines["model"]


def test_doctor_on_a_gpu_machine_with_tensorrt(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt())
    monkeypatch.setattr(cuda_api, "driver_version", lambda: "13.0")
    monkeypatch.setattr(cuda_api, "device_name", lambda device=0: GPU)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    code, lines = doctor_lines(capsys, [])
    assert code == 0
    assert lines["cuda driver"] == f"yes  CUDA 13.0, GPU 0: {GPU}" and lines["tensorrt"] == f"yes  {TRT_VERSION}"
    assert lines["extra"] == "this driver runs CUDA 13: pip install 'wsvs[gpu-cu13]'"
    assert lines["auto"].startswith("tries tensorrt, ort-cuda, ort-cpu, pytorch-eager in this order")


def test_doctor_without_onnxruntime_and_with_both_packages(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "torch", None)  # nor PyTorch: nothing can run
    monkeypatch.setattr(doctor, "installed_version", lambda name: "1.23.2")  # onnxruntime and onnxruntime-gpu
    code, lines = doctor_lines(capsys, [])
    assert code == 1
    assert lines["onnxruntime"].startswith("no   ONNX Runtime is not installed (pip install 'wsvs[cpu]'")
    assert "onnxruntime and onnxruntime-gpu are both installed" in lines["onnxruntime"]
    assert lines["auto"].startswith("tries nothing: no backend can run here")


def raising_cuda_error(message: str):
    def fail(*args: object) -> str:
        raise cuda_api.CudaError(message)

    return fail


# ---- the engine build under fault injection ----


def stand_in_builder(timing_cache_accepted: bool):
    """A ``tensorrt`` module whose builder parses and builds anything: the build's own checks are under test."""

    class Network:
        num_outputs = 2

        def get_input(self, index: int):
            return types.SimpleNamespace(name="images")

        def get_output(self, index: int):
            return types.SimpleNamespace(name=("scores", "labels")[index])

    class Config:
        def create_timing_cache(self, data: bytes) -> bytes:
            return data

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            return timing_cache_accepted

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"cache")

        def clear_flag(self, flag: object) -> None:
            pass

        def add_optimization_profile(self, profile: object) -> None:
            pass

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda name, low, opt, high: None)

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            return b"engine"

    module = stand_in_tensorrt()
    module.Builder = Builder
    module.OnnxParser = lambda network, logger: types.SimpleNamespace(parse_from_file=lambda path: True)
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    module.BuilderFlag = types.SimpleNamespace(TF32=7)
    return module


def test_engine_build_records_the_profile_and_refuses_a_foreign_timing_cache(tmp_path, monkeypatch):
    from wsvs.export import tensorrt_build

    monkeypatch.setattr(cuda_api, "device_name", lambda device=0: GPU)
    onnx_path, engine, cache = write_tiny_model(tmp_path) / "model.onnx", tmp_path / "out" / "m.engine", tmp_path / "c"
    cache.write_bytes(b"from another GPU")
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_builder(timing_cache_accepted=False))
    with pytest.raises(InputError, match=r"c: timing cache made by another GPU or TensorRT version"):
        tensorrt_build.build_engine(onnx_path, engine, PROFILE, "fp16", {}, cache)
    assert not engine.parent.exists() and cache.read_bytes() == b"from another GPU"

    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_builder(timing_cache_accepted=True))
    sidecar = tensorrt_build.build_engine(onnx_path, engine, PROFILE, "fp16", {"graph": "segmenter"}, cache)
    assert sidecar == json.loads(tensorrt_build.sidecar_path(engine).read_text())
    assert sidecar["profile"] == {"min": [1, 3, 32, 32], "opt": [1, 3, 64, 64], "max": [2, 3, 64, 64]}
    assert (sidecar["gpu"], sidecar["tensorrt_version"], sidecar["outputs"]) == (GPU, TRT_VERSION, ["scores", "labels"])
    assert engine.read_bytes() == b"engine" and cache.read_bytes() == b"cache"
