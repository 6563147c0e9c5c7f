"""The training loop that train-decoder and adapt share: Adam over a module's parameters, a full checkpoint and
resumable state every epoch, data-parallel across processes, then the foreground threshold calibrated on the
trained model's predictions of its own training masks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wsvs.runtime.config import dump_config

from .distributed import Replica, join

THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # foreground thresholds tried: 0.05 .. 0.95


class FitSettings(Protocol):
    """What the decoder training loop reads from a stage config (train-decoder's or adapt's)."""

    epochs: int
    batch_size: int
    lr: float
    input_size: int | None
    scale_jitter: tuple[float, ...]
    seed: int
    device: str


def calibrate_threshold(predictions: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, dict[str, float]]:
    """The foreground threshold of ``THRESHOLD_GRID`` whose masks (probability >= t) best match the true
    masks, by IoU pooled over all (probability, mask) pairs; returns it and the IoU at each threshold.

    Cross-entropy fits probabilities, and cutting them at 0.5 maximises pixel accuracy, not IoU: where the
    attention leaves an object's extent uncertain (the body away from its discriminative part), the
    probability there stays under 0.5 and a 0.5 cut keeps only the sure core. The threshold is chosen on the
    stage's own training masks, never on evaluation data.
    """
    intersection = np.zeros(len(THRESHOLD_GRID))
    union = np.zeros(len(THRESHOLD_GRID))
    for probability, mask in predictions:
        for k, threshold in enumerate(THRESHOLD_GRID):
            predicted = probability >= threshold
            intersection[k] += np.count_nonzero(predicted & mask)
            union[k] += np.count_nonzero(predicted | mask)
    iou = intersection / np.maximum(union, 1)
    return THRESHOLD_GRID[int(iou.argmax())], {str(t): round(float(v), 4) for t, v in zip(THRESHOLD_GRID, iou)}


# (module to step, this process's replica, batch of item indices, the epoch's random stream) -> (this
# process's mean loss on its share of the batch, the share's size)
BatchLoss = Callable[[Any, Replica, np.ndarray, np.random.Generator], tuple[Any, int]]


def fit(model, meta, module, items: int, batch_loss: BatchLoss,
        predictions: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], out: Path, config: FitSettings,
        record_name: str, record: dict[str, Any], resume: bool = False) -> Path:
    """The training loop of train-decoder and adapt: Adam on ``module``'s parameters over ``items`` training
    items for ``config.epochs``. The full checkpoint is written to ``out`` every epoch with
    ``meta.extra[record_name]`` = ``record`` + config + history (``--resume`` continues from the last one),
    and at the end with the foreground threshold calibrated on ``predictions()``, the trained model's
    (probability, mask) pairs of its training data. Every process draws the whole batch's augmentations, so
    the random stream does not depend on the number of processes. Returns ``out``."""
    import torch
    from tqdm import tqdm

    from .checkpoint import save_checkpoint
    from .training_state import resume_state, save_state

    replica = join(config.device)
    torch.manual_seed(config.seed)
    model.to(replica.device)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    start_epoch, history = resume_state(out, module, optimizer, config, replica.device) if resume else (0, [])
    extra_before = dict(meta.extra)
    meta.decoder_trained = True

    def write_checkpoint(**findings: Any) -> None:
        meta.extra = {**extra_before,
                      record_name: {**record, "config": dump_config(config), "history": history, **findings}}
        save_checkpoint(out, model, meta)

    stepped = replica.wrap(module)
    for epoch in range(start_epoch, config.epochs):
        module.train()
        rng = np.random.default_rng([config.seed, epoch])
        batches = replica.batches(rng.permutation(items), config.batch_size)
        loss = replica.train_epoch(batches, optimizer, lambda batch, rng=rng: batch_loss(stepped, replica, batch, rng),
                                   f"epoch {epoch + 1}/{config.epochs}")
        if replica.is_main:
            model.eval()
            history.append({"epoch": epoch + 1, "loss": loss})
            tqdm.write(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f}")
            write_checkpoint()
            save_state(out, module, optimizer, config, epoch + 1, history)
        replica.wait_for_main()
    if replica.is_main:
        model.eval()
        meta.foreground_threshold, iou = calibrate_threshold(predictions())
        tqdm.write(f"foreground threshold {meta.foreground_threshold}: IoU {iou[str(meta.foreground_threshold)]:.3f} "
                   f"with the training masks ({iou['0.5']:.3f} at 0.5)")
        write_checkpoint(threshold_iou=iou)
    replica.wait_for_main()
    return out
