"""The checkpoint itself as an inference backend (``pytorch-eager`` in ``wsvs.runtime.backends.BACKENDS``): the
graph modules that `wsvs export` traces (``wsvs.training.graphs``), run in PyTorch, behind the same interface as the
exported graphs, so that images, videos, `bench` and the Python API run on it like on any other backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from wsvs.runtime.backends import EAGER, Backend
from wsvs.runtime.contract import DEFAULT_TOP_K, GraphMetadata, checkpoint_digest

from .checkpoint import load_checkpoint
from .graphs import OUTPUT_NAMES, graph_modules


class EagerBackend(Backend):
    """One graph ("segmenter", "encoder" or "decoder") of a checkpoint in PyTorch, on the GPU where torch has one.
    Its metadata is what the graph would carry if exported at the default ``top_k``."""

    name = EAGER

    def __init__(self, checkpoint: Path, graph: str, threads: int = 0) -> None:
        model, meta = load_checkpoint(checkpoint)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        top_k = min(DEFAULT_TOP_K, meta.arch.num_classes)
        self.module = graph_modules(model.to(self.device), meta, top_k)[graph]
        self.output_names = OUTPUT_NAMES[graph]
        self.path = checkpoint
        self.metadata = GraphMetadata.of(meta, graph, "fp32", top_k, checkpoint_digest(checkpoint)).to_props()

    def run(self, inputs: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            values = self.module(torch.from_numpy(np.ascontiguousarray(inputs, np.float32)).to(self.device))
        named = dict(zip(self.output_names, values if isinstance(values, tuple) else (values,)))
        return {name: named[name].cpu().numpy() for name in outputs or self.output_names}

    def describe(self) -> str:
        return f"{EAGER} (PyTorch {torch.__version__}, {self.device.type})"
