"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``model.json`` (what rebuilds the model).

No pickled code or objects: weights are safetensors and metadata is JSON, so untrusted files load safely.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wsvs.runtime.contract import FORMAT_VERSION, METADATA_FILE, WEIGHTS_FILE, ModelMetadata
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import atomic_path, read_json, write_json

from .models import ARCHITECTURES, WSVSModel


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
    meta = ModelMetadata.from_json(read_json(metadata), metadata, ARCHITECTURES)
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
