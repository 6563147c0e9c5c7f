"""The state a training stage keeps beside its checkpoint, so that ``--resume`` continues after a kill.

``train_state.pt`` holds the trained module's and the optimiser's state dicts, the finished epoch count, the
history and the stage config; it is written atomically after every epoch and loaded with weights_only=True.
Only the epoch count may grow between runs: anything else would mix two trainings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsvs.runtime.config import dump_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import atomic_path

if TYPE_CHECKING:
    import torch

STATE_FILE = "train_state.pt"


def resume_state(folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, config: Any,
                 device: str) -> tuple[int, list[dict[str, Any]]]:
    """Load ``folder``'s training state into ``module`` and ``optimizer``; returns (finished epochs, history),
    (0, []) when there is none. A damaged state or another config is an InputError naming the file."""
    import torch

    path = folder / STATE_FILE
    if not path.is_file():
        return 0, []
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as exc:  # a foreign or damaged state file is the user's input problem
        raise InputError(path, f"cannot resume from this training state ({type(exc).__name__})") from None
    if {**state["config"], "epochs": config.epochs} != dump_config(config):
        raise InputError(path, "was written with a different config; train into a new --out")
    return int(state["epoch"]), list(state["history"])


def save_state(folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, config: Any, epoch: int,
               history: list[dict[str, Any]]) -> None:
    """Write ``folder``'s training state after ``epoch`` finished epochs (atomically)."""
    import torch

    with atomic_path(folder / STATE_FILE) as tmp:
        torch.save({"module": module.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "history": history, "config": dump_config(config)}, tmp)
