"""`wsvs export --model MODEL` (also `wsvs-export`): a checkpoint -> ONNX graphs (fp32, fp16 or int8 Q/DQ) ->
TensorRT engines, verified.

Writes three graphs (``X.onnx`` the end-to-end segmenter, ``X.encoder.onnx`` and ``X.decoder.onnx`` for the
video runtime) and, with ``--out-engine E.engine``, one engine per graph (``E.engine``, ``E.encoder.engine``,
``E.decoder.engine``) with JSON sidecars. Everything is built in a scratch folder, verified there, and only then
copied to temporary files beside the outputs and renamed over them, so a failure (verification included) leaves
none behind.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wsvs.runtime import __version__
from wsvs.runtime.contract import DEFAULT_TOP_K
from wsvs.runtime.errors import InputError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportConfig:
    """`wsvs export`: graph, precision and verification settings."""

    precision: str = "fp32"
    opset: int = 17
    top_k: int = DEFAULT_TOP_K
    # The engines' profile covers what the runtime feeds them: images at their own sizes from 32 px a side (the
    # image segmenter's smallest), 320x180 video frames, and up to 8 images of up to 1024x1024 per call (the image
    # segmenter's default batch; larger images are fitted into the profile by the runtime).
    min_shapes: tuple[int, ...] = (1, 3, 32, 32)
    opt_shapes: tuple[int, ...] | None = None  # None: 1x3xSxS at the checkpoint's training crop size S
    max_shapes: tuple[int, ...] = (8, 3, 1024, 1024)
    calibration_images: int = 64  # int8: at most this many images of --calib, in name order
    verify: bool = True
    atol: float | None = None  # None: the precision's default in wsvs.export.verify.DEFAULT_TOLERANCES
    rtol: float | None = None
    min_agreement: float | None = None
    min_label_agreement: float | None = None


def default_onnx_path(model: Path, precision: str) -> Path:
    """Inside a checkpoint folder ``model.onnx``; beside a ``X.pt`` ``X.onnx`` (``.fp16``/``.int8`` before it)."""
    from wsvs.training.checkpoint import is_pt

    folder, stem = (model.parent, model.stem) if is_pt(model) else (
        model.parent if model.suffix == ".safetensors" else model, "model")
    return folder / (f"{stem}.onnx" if precision == "fp32" else f"{stem}.{precision}.onnx")


def verification_shapes(profile) -> list[tuple[int, int, int, int]]:
    """The opt shape, and the largest batch at an odd size between min and opt (ceil-mode pooling, resizes)."""
    odd_height = (profile.min[2] + profile.opt[2]) // 2 | 1
    odd_width = (profile.min[3] + profile.opt[3]) // 2 | 1
    return [profile.opt, (profile.max[0], 3, odd_height, odd_width)]


@contextlib.contextmanager
def output_files(paths: list[Path]):
    """Temporary files beside every output, renamed over them only if the whole block succeeds."""
    from wsvs.runtime.io import atomic_path

    with contextlib.ExitStack() as stack:
        temporary = {}
        for path in paths:
            try:
                temporary[path] = stack.enter_context(atomic_path(path))
            except OSError as exc:
                raise InputError(path, f"cannot write the output here ({exc.strerror or exc})") from None
        yield temporary


def export(model_path: Path, onnx_path: Path | None, engine_path: Path | None, calib: Path | None,
           timing_cache: Path | None, config: ExportConfig) -> int:
    """The whole command; returns the exit code (1 when verification fails)."""
    import shutil

    from wsvs.runtime import cuda_api
    from wsvs.runtime.contract import checkpoint_digest
    from wsvs.runtime.io import image_files
    from wsvs.training.checkpoint import checkpoint_files, is_pt, load_checkpoint

    from . import onnx_export, tensorrt_build

    started = time.perf_counter()
    if config.precision not in PRECISIONS:
        raise InputError(None, f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    model, meta = load_checkpoint(model_path)
    weights = checkpoint_files(model_path)[0]
    digest = checkpoint_digest(weights if is_pt(weights) else weights.parent)
    side = meta.input_size
    profile = tensorrt_build.ShapeProfile(tuple(config.min_shapes), tuple(config.opt_shapes or (1, 3, side, side)),
                                          tuple(config.max_shapes))
    top_k = min(config.top_k, meta.arch.num_classes)
    if top_k < 1:
        raise InputError(None, f"--top-k must be >= 1, got {config.top_k}")
    if calib is not None and not (calib.is_dir() and image_files(calib)):
        raise InputError(calib, "calibration folder not found or has no images")
    if config.precision == "int8" and calib is None:
        raise InputError(None, "int8 needs calibration images: pass --calib DIR")
    if engine_path is not None:  # fail before any work when TensorRT or the GPU is missing
        tensorrt_build.import_tensorrt()
        cuda_api.device_name()

    graphs = onnx_export.GraphPaths.beside(onnx_path or default_onnx_path(model_path, config.precision))
    engines = onnx_export.GraphPaths.beside(engine_path, ".engine") if engine_path is not None else None
    outputs = [path for _, path in graphs.items()]
    if engines is not None:
        outputs += [p for _, path in engines.items() for p in (path, tensorrt_build.sidecar_path(path))]
    try:  # leaving the block by an exception discards the temporary files: nothing is written
        with output_files(outputs) as temporary, tempfile.TemporaryDirectory(prefix="wsvs-export-") as scratch:
            staged_graphs = onnx_export.GraphPaths.beside(Path(scratch) / "graphs" / graphs.segmenter.name)
            write_graphs(model, meta, Path(scratch) / "fp32", staged_graphs, top_k, calib, profile, config, digest)
            print(f"exported {config.precision} ONNX in {time.perf_counter() - started:.1f} s")
            staged_engines = None
            if engines is not None:
                staged_engines = onnx_export.GraphPaths.beside(Path(scratch) / "engines" / engines.segmenter.name,
                                                               ".engine")
                build_engines(staged_graphs, staged_engines, profile, config.precision, timing_cache)
            if config.verify and not verify_exports(model, meta, staged_graphs, staged_engines, profile, calib, top_k,
                                                    config):
                raise VerificationError
            staged = {path: getattr(staged_graphs, graph) for graph, path in graphs.items()}
            if engines is not None:
                for graph, path in engines.items():
                    engine = getattr(staged_engines, graph)
                    staged |= {path: engine, tensorrt_build.sidecar_path(path): tensorrt_build.sidecar_path(engine)}
            for path, source in staged.items():
                shutil.copyfile(source, temporary[path])
    except VerificationError:
        return 1
    print("wrote:")
    for path in outputs:
        print(f"  {path}  {path.stat().st_size / 1e6:.2f} MB")
    return 0


class VerificationError(Exception):
    """An output of the export is past tolerance (already reported): nothing is written, the exit code is 1."""


def write_graphs(model, meta, scratch: Path, graphs, top_k: int, calib: Path | None, profile,
                 config: ExportConfig, digest: str) -> None:
    """The three graphs at ``graphs``' paths in ``config.precision``, from fp32 graphs exported into ``scratch``
    (``digest``: the checkpoint's, recorded in their metadata); int8 calibrates on images of ``calib`` at the
    profile's opt size."""
    import shutil

    from wsvs.training.models import backbone_of

    from . import onnx_export, quantize, verify

    fp32 = onnx_export.GraphPaths.beside(scratch / "model.onnx")
    scratch.mkdir(parents=True, exist_ok=True)
    onnx_export.export_onnx(model, meta, fp32, config.opset, top_k, digest)
    if config.precision == "int8":
        calibration = verify.folder_images(calib, config.calibration_images, profile.opt[2], profile.opt[3])
    for graph, written in graphs.items():
        written.parent.mkdir(parents=True, exist_ok=True)
        source = getattr(fp32, graph)
        if config.precision == "fp32":
            shutil.copyfile(source, written)
        elif config.precision == "fp16":
            quantize.to_fp16(source, written)
        else:
            batches = [normalise_images(image[None], meta) for image in calibration]
            if graph == "decoder":
                batches = [verify.decoder_inputs(model, meta, batch) for batch in batches]
            quantize.to_int8(source, written, batches, backbone_of(meta.arch).int8_float_nodes)


def build_engines(graphs, engines, profile, precision: str, timing_cache: Path | None) -> None:
    """One TensorRT engine (and its JSON sidecar) per ONNX graph, with the graph's metadata."""
    import onnx

    from . import onnx_export, tensorrt_build

    for graph, path in engines.items():
        metadata = onnx_export.read_metadata(onnx.load(str(getattr(graphs, graph)), load_external_data=False))
        tensorrt_build.build_engine(getattr(graphs, graph), path, profile.for_input(graph), precision, metadata,
                                    timing_cache)
        print(f"built the {graph} engine")


def verify_exports(model, meta, graphs, engines, profile, calib: Path | None, top_k: int,
                   config: ExportConfig) -> bool:
    """Every graph on ONNX Runtime and every engine on the runtime's TensorRT backend against PyTorch fp32, at the
    verification shapes; whether every output is within tolerance."""
    from wsvs.runtime.timing import synthetic_images

    from . import verify

    default = verify.DEFAULT_TOLERANCES[config.precision]
    tolerance = verify.Tolerance(*(default_value if value is None else value for value, default_value in (
        (config.atol, default.atol), (config.rtol, default.rtol), (config.min_agreement, default.min_agreement),
        (config.min_label_agreement, default.min_label_agreement))))
    batches = []
    for seed, (n, _, h, w) in enumerate(verification_shapes(profile)):
        images = verify.folder_images(calib, n, h, w) if calib is not None else None
        if images is None or len(images) < n:
            images = synthetic_images(n, h, w, seed)
        batches.append(normalise_images(images, meta))
    print(f"verify against PyTorch fp32 (atol {tolerance.atol:g}, rtol {tolerance.rtol:g}, agreement >= "
          f"{100 * tolerance.min_agreement:g}% of values, {100 * tolerance.min_label_agreement:g}% of labels):")
    results = []
    for graph, path in graphs.items():
        cases = verify.verification_cases(model, meta, graph, batches, top_k)
        runners = [("onnxruntime", verify.onnxruntime_runner(path))]
        if engines is not None:
            runners.append(("tensorrt", verify.tensorrt_runner(getattr(engines, graph), graph)))
        for backend, run in runners:
            for result in verify.verify_graph(graph, backend, run, cases, tolerance):
                print(f"  {result.line()}")
                results.append(result)
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"wsvs-export: verification failed for {len(failed)} of {len(results)} outputs; nothing was written",
              file=sys.stderr)
        return False
    print(f"verification passed ({len(results)} outputs)")
    return True


def normalise_images(images, meta):
    from wsvs.runtime.preprocess import normalise

    return normalise(images, meta.mean, meta.std)


DESCRIPTION = ("Export a wsvs checkpoint to ONNX (the end-to-end segmenter plus the encoder and decoder graphs) in "
               "fp32, fp16 or int8 (Q/DQ from static calibration), optionally build TensorRT engines, and verify "
               "every backend against PyTorch. Graph inputs are float32 NCHW RGB normalised with the checkpoint's "
               "mean/std (recorded in the graph's metadata); batch, height and width are dynamic. The TensorRT "
               "flags also take trtexec's spellings (--minShapes, --optShapes, --maxShapes, --timingCacheFile).")
HELP = "checkpoint -> ONNX graphs (fp32/fp16/int8) and TensorRT engines, verified against PyTorch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `wsvs export` and `wsvs-export`: one definition for both."""
    parser.add_argument("--model", type=Path, default=None, metavar="MODEL",
                        help="checkpoint: a folder (or its model.safetensors) or a one-file X.pt")
    # The model was once a positional argument; `wsvs-export MODEL ...` keeps working.
    parser.add_argument("model_positional", nargs="?", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, metavar="OUT.onnx",
                        help="segmenter graph path; .encoder.onnx/.decoder.onnx go beside it "
                        "(default: MODEL/model.onnx, or model.fp16.onnx / model.int8.onnx; X.onnx beside X.pt)")
    parser.add_argument("--onnx", dest="out", type=Path, default=None, help=argparse.SUPPRESS)  # older name
    parser.add_argument("--out-engine", dest="out_engine", type=Path, default=None, metavar="OUT.engine",
                        help="also build TensorRT engines here; .encoder.engine/.decoder.engine go beside it "
                        "(needs tensorrt and an NVIDIA GPU)")
    parser.add_argument("--engine", dest="out_engine", type=Path, default=None, help=argparse.SUPPRESS)  # older name
    parser.add_argument("--format", choices=list(FORMATS), default="onnx",
                        help="; ".join(f"{f.name}: {f.summary}" for f in FORMATS.values()) + " (default onnx)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="graph precision (default fp32)")
    parser.add_argument("--calib", type=Path, default=None, metavar="DIR",
                        help="folder of calibration images (needed for int8; also used for --verify)")
    for name, example in (("min", "1x3x32x32"), ("opt", "4x3x180x320"), ("max", "8x3x1024x1024")):
        parser.add_argument(f"--{name}-shapes", f"--{name}Shapes", dest=f"{name}_shapes", default=None,
                            metavar="NxCxHxW",
                            help=f"{name} shape of the images input for the TensorRT profile and verification "
                            f"(trtexec style, e.g. {example} or images:{example})")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument("--top-k", type=int, default=None, help="classes per image through the decoder (default 3)")
    parser.add_argument("--timing-cache", "--timingCacheFile", dest="timing_cache", type=Path, default=None,
                        metavar="FILE", help="TensorRT timing cache, read if present and updated")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                        help="compare every backend with PyTorch and exit 1 past tolerance (default on)")
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance (default by precision)")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance (default by precision)")
    parser.add_argument("--min-agreement", type=float, default=None,
                        help="fraction of each float output that must be within tolerance (default by precision)")
    parser.add_argument("--min-label-agreement", type=float, default=None,
                        help="fraction of labels and classes that must be equal (default by precision)")
    parser.add_argument("--config", type=Path, default=None, help="YAML with ExportConfig keys")
    parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the `wsvs-export` console script (the same arguments as `wsvs export`)."""
    parser = argparse.ArgumentParser(prog="wsvs-export", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"wsvs-export {__version__}")
    add_arguments(parser)
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """`wsvs export`: the arguments of `wsvs-export`."""
    add_arguments(subparsers.add_parser("export", help=HELP, description=DESCRIPTION))


def model_argument(args: argparse.Namespace) -> Path:
    """--model, or the positional model of older command lines (not both)."""
    if args.model is not None and args.model_positional is not None and args.model != args.model_positional:
        raise InputError(None, f"two models given: --model {args.model} and {args.model_positional}")
    model = args.model if args.model is not None else args.model_positional
    if model is None:
        raise InputError(None, "no model: pass --model MODEL (a checkpoint folder or X.pt)")
    return model


def write_onnx(args: argparse.Namespace, config: ExportConfig) -> int:
    """--format onnx: the three graphs (and engines too when --out-engine is given, its older spelling)."""
    return export(model_argument(args), args.out, args.out_engine, args.calib, args.timing_cache, config)


def write_tensorrt(args: argparse.Namespace, config: ExportConfig) -> int:
    """--format tensorrt: the graphs and their engines, at --out-engine or beside the graphs (X.engine)."""
    model = model_argument(args)
    onnx_path = args.out or default_onnx_path(model, config.precision)
    engine = args.out_engine or onnx_path.with_suffix(".engine")
    return export(model, onnx_path, engine, args.calib, args.timing_cache, config)


def write_triton(args: argparse.Namespace, config: ExportConfig) -> int:
    """--format triton: the verified ONNX segmenter graph as a Triton model repository at --out (a model named
    after the checkpoint)."""
    from . import triton

    if args.out_engine is not None:
        raise InputError(args.out_engine, "--format triton writes the ONNX graph (onnxruntime_onnx); an engine "
                                          "repository (tensorrt_plan) is not supported")
    model, repo = model_argument(args), args.out
    if repo is None:
        raise InputError(None, "--format triton needs --out REPO (the model repository folder)")
    name = model.stem if model.suffix == ".pt" else (model.parent if model.suffix == ".safetensors" else model).name
    with tempfile.TemporaryDirectory(prefix="wsvs-triton-") as scratch:
        graph = Path(scratch) / "model.onnx"
        code = export(model, graph, None, args.calib, None, config)
        if code == 0:
            print(f"wrote the Triton model {triton.write_repository(graph, repo, name, config.max_shapes[0])}")
    return code


@dataclass(frozen=True)
class ExportFormat:
    """One row of ``FORMATS``: what --format NAME writes, and the function that writes it (returns the exit code)."""

    name: str
    summary: str
    write: Callable[[argparse.Namespace, ExportConfig], int]


# Every output format of `wsvs export --format`; the precision (fp32, fp16, int8) of the graphs is --precision.
FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", "the segmenter, encoder and decoder ONNX graphs (X.onnx, X.encoder.onnx, X.decoder.onnx)",
                 write_onnx),
    ExportFormat("tensorrt", "the ONNX graphs and a TensorRT engine of each (X.engine, ...; needs tensorrt and an "
                 "NVIDIA GPU)", write_tensorrt),
    ExportFormat("triton", "a Triton model repository at --out REPO (REPO/NAME/config.pbtxt, 1/model.onnx, "
                 "labels.txt)", write_triton),
)}


def run(args: argparse.Namespace) -> int:
    from wsvs.runtime.config import load_config

    from .tensorrt_build import parse_shape

    shapes = {f"{name}_shapes": None if getattr(args, f"{name}_shapes") is None
              else parse_shape(getattr(args, f"{name}_shapes")) for name in ("min", "opt", "max")}
    config = load_config(ExportConfig, args.config, precision=args.precision, opset=args.opset, top_k=args.top_k,
                         verify=args.verify, atol=args.atol, rtol=args.rtol, min_agreement=args.min_agreement,
                         min_label_agreement=args.min_label_agreement,
                         **shapes)
    return FORMATS[args.format].write(args, config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"wsvs-export: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("torch", "safetensors", "onnx"):
            raise
        print(f"wsvs-export: error: needs {exc.name}, which is not installed; install the training extra: "
              "pip install 'wsvs[train]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsvs-export: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
