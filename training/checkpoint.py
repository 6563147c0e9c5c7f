"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``model.json`` (what rebuilds the model), or one
``.pt`` file holding the same as plain data: ``{"state_dict": {name: tensor}, "wsvs_metadata": "<model.json text>"}``.

No pickled code or objects: a ``.pt`` is read with ``torch.load(weights_only=True)``, which refuses anything but
tensors and plain containers, so untrusted files load safely.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wsvs.runtime.contract import FORMAT_VERSION, METADATA_FILE, WEIGHTS_FILE, ModelMetadata
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import atomic_path, read_json, write_json

from .models import ARCHITECTURES, WSVSModel

PT_SUFFIX = ".pt"
PT_WEIGHTS, PT_METADATA = "state_dict", "wsvs_metadata"  # the two keys of a .pt checkpoint
PT_HOWTO = (f"wsvs needs a dict {{'{PT_WEIGHTS}': model.state_dict(), '{PT_METADATA}': <the model.json text of "
            "wsvs.runtime.contract.ModelMetadata>}, as wsvs.training.checkpoint.save_checkpoint(PATH.pt, model, meta) "
            "and the training commands' --out PATH.pt write it")


def is_pt(path: str | Path) -> bool:
    """Whether ``path`` names a one-file ``.pt`` checkpoint (anything else is a folder or its weights file)."""
    return Path(path).suffix == PT_SUFFIX


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths for a checkpoint folder or for its weights file; both are the file of a ``.pt``."""
    path = Path(path)
    if is_pt(path):
        return path, path
    folder = path.parent if path.suffix == ".safetensors" else path
    return folder / WEIGHTS_FILE, folder / METADATA_FILE


def save_checkpoint(path: str | Path, model: WSVSModel, meta: ModelMetadata) -> Path:
    """Write a checkpoint folder (weights then metadata, each atomically) or, for a ``.pt`` path, the one file
    (atomically); returns the folder or the file."""
    weights, metadata = checkpoint_files(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if is_pt(path):
        weights.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(weights) as tmp:
            torch.save({PT_WEIGHTS: state, PT_METADATA: json.dumps(meta.to_json())}, tmp)
        return weights
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"wsvs_format": str(FORMAT_VERSION)})
    write_json(metadata, meta.to_json())
    return weights.parent


def read_pt(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata JSON) of a ``.pt`` checkpoint, loaded with weights_only=True: a pickled module or any
    other object is refused before any of its code runs."""
    if not path.is_file():
        raise InputError(path, "checkpoint file not found")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(path, f"holds pickled objects (a saved module?) that wsvs does not load; {PT_HOWTO}") from None
    except Exception as exc:  # truncated or not a torch file at all: the user's input problem
        raise InputError(path, f"cannot read this .pt file ({type(exc).__name__}: {exc})") from None
    if not (isinstance(content, dict) and isinstance(content.get(PT_WEIGHTS), dict)
            and isinstance(content.get(PT_METADATA), str)):
        found = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise InputError(path, f"is not a wsvs checkpoint (found {found}); {PT_HOWTO}")
    try:
        metadata = json.loads(content[PT_METADATA])
    except json.JSONDecodeError as exc:
        raise InputError(path, f"'{PT_METADATA}' is not valid JSON ({exc})") from None
    return content[PT_WEIGHTS], metadata


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[WSVSModel, ModelMetadata]:
    """Rebuild the model from a checkpoint folder (or its .safetensors file) or a ``.pt`` file, in eval mode.

    A missing, corrupt, unsafe or mismatched checkpoint is an InputError naming the file.
    """
    weights, metadata = checkpoint_files(path)
    if is_pt(path):
        state, data = read_pt(weights)
        meta = ModelMetadata.from_json(data, weights, ARCHITECTURES)
        model = ARCHITECTURES[meta.architecture](meta.arch)
    else:
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


def training_folder(out: Path) -> Path:
    """Where a training command with ``--out OUT`` trains: ``OUT`` itself, or for ``X.pt`` the folder ``X.train/``
    beside it, which keeps what ``--resume`` and reruns need (training state, caches) as it does for a folder."""
    return out.with_name(f"{out.stem}.train") if is_pt(out) else out


def finish_training(folder: Path, out: Path) -> Path:
    """The checkpoint at ``out``: for a ``.pt``, the one file written from the checkpoint trained in ``folder``."""
    if is_pt(out):
        model, meta = load_checkpoint(folder)
        save_checkpoint(out, model, meta)
    return out
