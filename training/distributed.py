"""Training on several GPUs (or CPU processes) through torchrun, with no process management of our own.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) each process joins the process group (NCCL on GPUs, gloo
on CPUs), takes its share of every batch and steps a DistributedDataParallel copy of the model, which averages
the gradients: with equal shares a step equals the single-process step on the whole batch (batch-norm layers
normalise each share on its own). Every process draws the same augmentations in the same order, so a run does
not depend on the number of processes. Only rank 0 evaluates and writes files.

    torchrun --nproc_per_node 4 -m wsvs.runtime.cli train-encoder --data VOC2012 --out runs/encoder
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> str:
    """``auto`` is CUDA when a GPU is there, else the CPU; under torchrun a process takes its local GPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    return name


@dataclass(frozen=True)
class Replica:
    """This process's place in the run: rank, number of processes and device."""

    rank: int
    world_size: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batches(self, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """``order`` cut into batches; with several processes each batch is trimmed to a multiple of their
        number, so that no process gets an empty share."""
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if self.world_size > 1:
            batches = [b[:len(b) - len(b) % self.world_size] for b in batches]
        return [b for b in batches if len(b)]

    def share(self, items: np.ndarray) -> np.ndarray:
        """This process's equal share of a batch (its rows)."""
        return np.array_split(items, self.world_size)[self.rank]

    def wrap(self, module):
        """The module to step: DistributedDataParallel around it with several processes, else itself."""
        if self.world_size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device] if self.device.startswith("cuda") else None)

    def total(self, value: float) -> float:
        """The sum of ``value`` over all processes."""
        if self.world_size == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def train_epoch(self, batches: list[np.ndarray], optimizer: torch.optim.Optimizer,
                    batch_loss: Callable[[np.ndarray], tuple[torch.Tensor, int]], desc: str) -> float:
        """One pass over ``batches``: ``batch_loss(batch)`` gives this process's mean loss on its share and the
        share's size; each loss takes one optimiser step. Returns the mean loss per item over all processes."""
        from wsvs.runtime.progress import progress_bar

        total = 0.0
        bar = progress_bar(batches, desc=desc, unit="batch", leave=False, disable=not self.is_main)
        for batch in bar:
            loss, size = batch_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * size
            bar.set_postfix(loss=f"{loss.item():.3f}")
        return self.total(total) / sum(len(b) for b in batches)

    def wait_for_main(self) -> None:
        """All processes meet here (after rank 0 has written its files)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def join(device_name: str) -> Replica:
    """This process's replica: a process group under torchrun, a single replica otherwise."""
    import torch

    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Replica(0, 1, device)
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        # Left to the interpreter's teardown, gloo's worker threads can free tensors after Python is gone and
        # abort the process (SIGABRT) after it finished its work: leave the group while Python is still alive.
        atexit.register(dist.destroy_process_group)
    return Replica(dist.get_rank(), dist.get_world_size(), device)
