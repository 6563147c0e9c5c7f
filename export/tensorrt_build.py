"""ONNX -> serialised TensorRT engine plus a JSON sidecar, against the TensorRT 10 and 11 Python API.

Networks are built strongly typed: the precision is the ONNX graph's own (fp16 casts, int8 Q/DQ), which is
the only mode TensorRT 11 has and the one TensorRT 10 honours without builder precision flags.
``tensorrt`` is imported only when an engine is built, so everything else works without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from wsvs.runtime import __version__, cuda_api
from wsvs.runtime.errors import InputError, first_line
from wsvs.runtime.io import atomic_path, write_json

Shape = tuple[int, int, int, int]
_SHAPE = re.compile(r"^(?:[A-Za-z_][\w./-]*:)?(\d+)x(\d+)x(\d+)x(\d+)$")
MIN_SIDE = 32  # the encoder's stride 8 at the smallest scale still leaves a few CAM cells


def parse_shape(text: str) -> Shape:
    """``NxCxHxW`` or trtexec's ``images:NxCxHxW`` -> (N, C, H, W); a malformed shape is an InputError."""
    match = _SHAPE.match(text.strip())
    if not match:
        raise InputError(None, f"shape {text!r} is not NxCxHxW (e.g. 1x3x321x321 or images:1x3x321x321)")
    return tuple(int(v) for v in match.groups())  # type: ignore[return-value]


@dataclass(frozen=True)
class ShapeProfile:
    """One optimisation profile of the ``images`` input: min <= opt <= max in every dimension."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        for name, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if shape[1] != 3:
                raise InputError(None, f"--{name}Shapes {_text(shape)}: images have 3 channels")
            if shape[0] < 1 or min(shape[2:]) < MIN_SIDE:
                raise InputError(None, f"--{name}Shapes {_text(shape)}: batch must be >= 1 and sides >= {MIN_SIDE}")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise InputError(None, f"shapes must satisfy min <= opt <= max in every dimension, got min "
                                   f"{_text(self.min)}, opt {_text(self.opt)}, max {_text(self.max)}")

    def for_input(self, graph: str) -> tuple[Shape, Shape, Shape]:
        """The profile of a graph's input: the decoder takes one attention channel per image."""
        if graph == "decoder":
            return tuple((s[0], 1, s[2], s[3]) for s in (self.min, self.opt, self.max))  # type: ignore[return-value]
        return self.min, self.opt, self.max

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _text(shape: Shape) -> str:
    return "x".join(str(v) for v in shape)


def import_tensorrt():
    """The ``tensorrt`` module, or an InputError saying what is missing (the CLI prints it and exits 2)."""
    try:
        import tensorrt
    except ImportError:
        raise InputError(None, f"TensorRT is not installed ({cuda_api.INSTALL} on a machine with an NVIDIA GPU), "
                               "or export ONNX only") from None
    return tensorrt


def build_engine(onnx_path: Path, engine_path: Path, shapes: tuple[Shape, Shape, Shape], precision: str,
                 metadata: dict[str, str], timing_cache: Path | None = None) -> dict:
    """Parse ``onnx_path``, build one optimisation profile from ``shapes`` (min, opt, max of its only input),
    write the serialised engine and ``<engine>.json`` atomically, and update ``timing_cache``.

    Returns the sidecar's content; its "profile" ({"min": [N, C, H, W], "opt": ..., "max": ...}) says which input
    shapes the engine takes.
    """
    trt = import_tensorrt()
    device = cuda_api.device_name()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:  # "factory function returned nullptr": TensorRT could not start CUDA
        raise InputError(None, f"TensorRT cannot start on this GPU ({first_line(exc)})") from None
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TensorRT 11 is strongly typed always
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0).desc() if parser.num_errors else "unknown parser error"
        raise InputError(onnx_path, f"TensorRT cannot parse the graph: {first}")
    config = builder.create_builder_config()
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TensorRT 10 enables TF32 by default; fp32 means fp32 here
    input_name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False):
        raise InputError(timing_cache, "timing cache made by another GPU or TensorRT version: delete it, or pass "
                                       "another --timing-cache")

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(onnx_path, "TensorRT failed to build an engine (see the messages above)")
    sidecar = {
        "wsvs_version": __version__,
        "tensorrt_version": trt.__version__,
        "gpu": device,
        "onnx": onnx_path.name,
        "precision": precision,
        "input": input_name,
        "profile": {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])},
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "metadata": metadata,
    }
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    write_json(sidecar_path(engine_path), sidecar)
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return sidecar


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")

