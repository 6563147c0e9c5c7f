"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``model.json`` (what rebuilds the model).

No pickled code or objects: weights are safetensors and metadata is JSON, so untrusted files load safely.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wsvs.runtime import __version__
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import atomic_path, read_json, write_json

from .models import ARCHITECTURES, ArchConfig, WSVSModel

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "model.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelMetadata:
    """Everything besides weights that inference and export need."""

    class_names: list[str]
    arch: ArchConfig
    architecture: str = "vgg16-cam-deconv"
    mean: tuple[float, ...] = IMAGENET_MEAN  # applied to RGB in [0, 1]
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 321  # training crop side
    scales: tuple[float, ...] = (0.75, 1.0, 1.5)  # multi-scale attention (§3.2)
    class_threshold: float = 0.5  # a class is present when its probability passes this (§3.4)
    # a pixel is foreground where a present class's decoder probability reaches this; the decoder's training
    # sets it to the value that best fits its training masks (see train_decoder.calibrate_threshold)
    foreground_threshold: float = 0.5
    decoder_trained: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # stage records (training history, metrics)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["format_version"] = FORMAT_VERSION
        data["wsvs_version"] = __version__
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> ModelMetadata:
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise InputError(path, f"not a wsvs checkpoint of format version {FORMAT_VERSION}")
        if data.get("architecture") not in ARCHITECTURES:
            raise InputError(path, f"unknown architecture {data.get('architecture')!r} "
                                   f"(known: {', '.join(ARCHITECTURES)})")
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


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths for a checkpoint folder or for its weights file."""
    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" else path
    return folder / WEIGHTS_FILE, folder / METADATA_FILE


def save_checkpoint(folder: str | Path, model: WSVSModel, meta: ModelMetadata) -> Path:
    """Write weights then metadata, each atomically; returns the folder."""
    weights, metadata = checkpoint_files(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"wsvs_format": str(FORMAT_VERSION)})
    write_json(metadata, meta.to_json())
    return weights.parent


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[WSVSModel, ModelMetadata]:
    """Rebuild the model from a checkpoint folder (or its .safetensors file), in eval mode.

    A missing, corrupt or mismatched checkpoint is an InputError naming the file.
    """
    weights, metadata = checkpoint_files(path)
    if not weights.parent.is_dir():
        raise InputError(weights.parent, "checkpoint folder not found")
    meta = ModelMetadata.from_json(read_json(metadata), metadata)
    model = ARCHITECTURES[meta.architecture](meta.arch)
    if not weights.is_file():
        raise InputError(weights, "weights file not found")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise InputError(weights, f"corrupt weights file ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        problem = f"weights do not match the architecture in {metadata.name}: {first}"
        raise InputError(weights, problem) from None
    return model.to(device).eval(), meta


def load_backbone_weights(model: WSVSModel, path: str | Path) -> int:
    """Copy torchvision-format VGG-16 ImageNet weights (``features.N.*``) into the encoder.

    Returns the number of tensors copied.

    Only width 1 matches those shapes. The file is read with ``weights_only=True`` (or as safetensors).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable or unsafe file is the user's input problem
        raise InputError(path, f"cannot read backbone weights ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    target = model.encoder.features.state_dict()
    found = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    missing = [k for k in target if k not in found]
    if missing:
        raise InputError(path, f"no VGG-16 'features.*' weights for {', '.join(missing[:3])}")
    for key, value in target.items():
        if found[key].shape != value.shape:
            raise InputError(path, f"features.{key} has shape {tuple(found[key].shape)}, the encoder "
                                   f"needs {tuple(value.shape)} (ImageNet weights need --width 1)")
    model.encoder.features.load_state_dict({k: found[k] for k in target})
    return len(target)
