"""Backend-vs-PyTorch checks of exported graphs, in the manner of Polygraphy's ``run --atol --rtol``: graphs on
ONNX Runtime, engines on the runtime's own TensorRT backend (``wsvs.runtime.backends``), the code that runs them.

Each output is compared element-wise: a float element agrees when ``|got - ref| <= atol + rtol * |ref|``, an
integer element (labels, classes) when it is equal. A graph passes when every float output agrees on at least
``min_agreement`` of its elements and every integer output on ``min_label_agreement``.

fp32 graphs must agree everywhere; reduced precision on a fraction of the elements, since fp16 rounding or an
int8 step near a decision (a class score at the class threshold, a decoder output at the foreground threshold)
moves a few values a lot while the labels stay equal almost everywhere. The decoder's unpooling switches are soft (see
``wsvs.training.models.SWITCH_TEMPERATURE``) so that a last-bit difference upstream cannot move one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wsvs.runtime.contract import ModelMetadata, labels_from_foreground
from wsvs.runtime.io import image_files, read_image_rgb
from wsvs.runtime.preprocess import resize_rgb
from wsvs.training.graphs import OUTPUT_NAMES, DecoderGraph, EncoderGraph
from wsvs.training.models import WSVSModel, multiscale_attention


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_agreement: float  # float outputs: fraction of elements within atol + rtol * |ref|
    min_label_agreement: float  # integer outputs (labels, classes): fraction of equal elements


# Defaults per precision, against the fp32 PyTorch model (measured margins in tests/test_export_onnx.py).
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_agreement=1.0, min_label_agreement=0.999),
    "fp16": Tolerance(atol=2e-2, rtol=2e-2, min_agreement=0.95, min_label_agreement=0.99),
    "int8": Tolerance(atol=0.1, rtol=0.1, min_agreement=0.8, min_label_agreement=0.9),
}


@dataclass
class Comparison:
    """One output of one graph on one backend and input shape."""

    graph: str
    backend: str
    shape: tuple[int, ...]
    output: str
    max_abs: float
    max_rel: float
    agreement: float
    passed: bool

    def line(self) -> str:
        errors = "" if np.isnan(self.max_abs) else f"max abs {self.max_abs:.3g}  max rel {self.max_rel:.3g}  "
        return (f"{self.graph:9s} {self.backend:11s} {'x'.join(map(str, self.shape)):14s} {self.output:10s} "
                f"{errors}agree {100 * self.agreement:.3f}%  {'PASS' if self.passed else 'FAIL'}")


def compare(reference: np.ndarray, got: np.ndarray, tolerance: Tolerance) -> tuple[float, float, float]:
    """(max abs error, max relative error, fraction of agreeing elements); errors are NaN for integers."""
    if reference.shape != got.shape:
        return float("inf"), float("inf"), 0.0
    if np.issubdtype(reference.dtype, np.integer):
        return float("nan"), float("nan"), float(np.mean(reference == got))
    ref, out = reference.astype(np.float64), got.astype(np.float64)
    error = np.abs(out - ref)
    within = error <= tolerance.atol + tolerance.rtol * np.abs(ref)
    relative = error / np.maximum(np.abs(ref), 1e-6)
    return float(error.max(initial=0)), float(relative.max(initial=0)), float(within.mean())


def folder_images(folder: Path, count: int, height: int, width: int) -> np.ndarray:
    """Up to ``count`` images of ``folder`` (sorted by name), resized to (height, width), as (N, H, W, 3)."""
    return np.stack([resize_rgb(read_image_rgb(p), (height, width)) for p in image_files(folder)[:count]])


@torch.no_grad()
def reference_segmentation(model: WSVSModel, meta: ModelMetadata, images: torch.Tensor,
                           top_k: int) -> tuple[torch.Tensor, ...]:
    """§3.4 on the unchanged model functions, one class at a time, with the labels by the runtime's numpy rule
    (``wsvs.runtime.contract.labels_from_foreground``): the ground truth that the segmenter graph (batched,
    gathered, masked, the rule in graph ops) must reproduce. Outputs as ``SegmenterGraph``."""
    logits, _ = model.encoder(images)
    scores = torch.sigmoid(logits)
    attention = multiscale_attention(model.encoder, images, meta.scales)
    top_scores, classes = scores.topk(top_k, dim=1)
    probs = torch.zeros(images.shape[0], top_k, *images.shape[-2:])
    for n in range(images.shape[0]):
        for slot in range(top_k):
            if top_scores[n, slot] > meta.class_threshold:
                class_attention = attention[n, classes[n, slot]][None, None]
                probs[n, slot] = torch.sigmoid(model.decoder(class_attention))[0, 0]
    labels = labels_from_foreground(probs.numpy(), meta.foreground_threshold, classes.numpy())
    return scores, classes, probs, torch.from_numpy(labels.astype(np.int32))


def reference_outputs(model: WSVSModel, meta: ModelMetadata, graph: str, inputs: np.ndarray,
                      top_k: int) -> list[np.ndarray]:
    """What each graph must output for ``inputs``, from the PyTorch model."""
    x = torch.from_numpy(inputs)
    with torch.no_grad():
        if graph == "segmenter":
            outputs = reference_segmentation(model, meta, x, top_k)
        elif graph == "encoder":
            outputs = EncoderGraph(model.encoder, meta.scales)(x)
        else:
            outputs = (DecoderGraph(model.decoder)(x),)
    return [o.numpy() for o in outputs]


def decoder_inputs(model: WSVSModel, meta: ModelMetadata, images: np.ndarray) -> np.ndarray:
    """Attention maps of each image's most likely class, (N, 1, H, W): what the decoder sees in use."""
    x = torch.from_numpy(images)
    with torch.no_grad():
        logits, _ = model.encoder(x)
        attention = multiscale_attention(model.encoder, x, meta.scales)
    best = logits.argmax(dim=1)
    return attention[torch.arange(len(best)), best][:, None].numpy()


def onnxruntime_runner(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Run an ONNX graph on the runtime's ONNX Runtime CPU backend (``wsvs.runtime.backends.OnnxRuntimeBackend``),
    the code that runs it in use; the outputs in the graph's order."""
    from wsvs.runtime.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path)
    return lambda inputs: list(backend.run(inputs).values())


def tensorrt_runner(path: Path, graph: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Run a serialised engine on the runtime's TensorRT backend (``wsvs.runtime.backends.TensorRTBackend``), the
    code that runs it in use; the outputs in the graph's order (``OUTPUT_NAMES``)."""
    from wsvs.runtime.backends import TensorRTBackend

    backend = TensorRTBackend(path)

    def run(inputs: np.ndarray) -> list[np.ndarray]:
        outputs = backend.run(inputs)
        return [outputs[name] for name in OUTPUT_NAMES[graph]]

    return run


def class_agreement(scores: np.ndarray, reference: np.ndarray, got: np.ndarray, tolerance: Tolerance) -> float:
    """Fraction of top-k class slots (N, k) that agree: the same class, or one whose reference score ties the
    reference class's within tolerance (a trained model scores most absent classes ~1e-9: their order is noise)."""
    rows, last = np.arange(len(scores))[:, None], scores.shape[1] - 1
    expected = scores[rows, np.clip(reference, 0, last)].astype(np.float64)
    other = scores[rows, np.clip(got, 0, last)].astype(np.float64)
    valid = (reference >= 0) & (reference <= last) & (got >= 0) & (got <= last)  # else only equality counts
    tied = valid & (np.abs(other - expected) <= tolerance.atol + tolerance.rtol * np.abs(expected))
    return float(np.mean((reference == got) | tied))


def verify_graph(graph: str, backend: str, run: Callable[[np.ndarray], list[np.ndarray]],
                 cases: list[tuple[np.ndarray, list[np.ndarray]]], tolerance: Tolerance) -> list[Comparison]:
    """Compare a backend's outputs with the references for each (inputs, reference outputs) case."""
    results = []
    for inputs, references in cases:
        named = dict(zip(OUTPUT_NAMES[graph], references))
        for name, reference, got in zip(OUTPUT_NAMES[graph], references, run(inputs)):
            max_abs, max_rel, agreement = compare(reference, got, tolerance)
            if name == "classes" and reference.shape == got.shape:
                agreement = class_agreement(named["scores"], reference, got, tolerance)
            required = (tolerance.min_label_agreement if np.issubdtype(reference.dtype, np.integer)
                        else tolerance.min_agreement)
            results.append(Comparison(graph, backend, tuple(inputs.shape), name, max_abs, max_rel, agreement,
                                      agreement >= required))
    return results


def verification_cases(model: WSVSModel, meta: ModelMetadata, graph: str, images: list[np.ndarray],
                       top_k: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(inputs, PyTorch reference outputs) of ``graph`` for each batch of normalised images."""
    cases = []
    for batch in images:
        inputs = decoder_inputs(model, meta, batch) if graph == "decoder" else batch
        cases.append((inputs, reference_outputs(model, meta, graph, inputs, top_k)))
    return cases

