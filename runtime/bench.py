"""`wsvs bench`: latency and throughput of the end-to-end segmenter per backend, PyTorch eager as the baseline.

Every backend runs the same normalised batches (smooth synthetic images, ``size`` x ``size``) after
``warmup`` calls; each of ``iterations`` calls is timed. Results: p50/p95/p99 latency per call, throughput in
images/s, the ratio to PyTorch eager at the same batch, and the fraction of labels equal to PyTorch's (a
backend that is fast but wrong shows here). Files are named by device and versions:
``<out>/runtime_<device>_<versions>.{json,md,png}``.

Every row of ``wsvs.runtime.backends.BACKENDS`` can be timed; only the PyTorch baseline needs torch: on an edge device
that has only the runtime, the ONNX Runtime and TensorRT backends are timed against each other.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from . import cuda_api
from .backends import BACKENDS, EAGER, Backend, backend_name, importable, open_backend
from .config import dump_config, load_config
from .contract import GraphMetadata
from .errors import InputError
from .io import atomic_path, write_json


@dataclass
class BenchConfig:
    """`wsvs bench`: what to run and how many times."""

    backends: tuple[str, ...] = ("all",)  # "all": PyTorch eager and every backend that loads here
    batches: tuple[int, ...] = (1, 8)
    size: int = 320  # square input side
    iterations: int = 20
    warmup: int = 3
    threads: int = 0  # intra-op threads for ORT and PyTorch; 0: the library's default (all cores)


PERCENTILES = (50, 95, 99)  # of the per-call latency

def device_name() -> str:
    """The GPU's name when there is one, else the CPU model and core count."""
    try:
        return cuda_api.device_name()
    except InputError:
        pass
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    return f"{model}, {os.cpu_count()} cores"


def versions() -> dict[str, str]:
    """What the timings depend on: the versions of the packages that can be imported here (read from their metadata,
    so torch is never imported), torch and TensorRT where they are installed."""
    from wsvs.runtime import __version__

    found = {"wsvs": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for key, distributions in (("onnxruntime", ("onnxruntime", "onnxruntime-gpu")), ("torch", ("torch",)),
                               ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"))):
        for distribution in distributions:
            try:
                if importable(key):
                    found[key] = metadata.version(distribution)
                    break
            except metadata.PackageNotFoundError:
                pass
    return found


def open_backends(model: Path, names: list[str], threads: int) -> tuple[dict[str, Backend], dict[str, str]]:
    """(segmenter backend by name, why each skipped backend was skipped). Names given explicitly must load;
    "all" (every row of BACKENDS) skips what does not load here."""
    everything = "all" in names
    wanted = list(BACKENDS) if everything else [backend_name(name) for name in names]
    loaded: dict[str, Backend] = {}
    skipped: dict[str, str] = {}
    for name in wanted:
        try:
            loaded[name] = open_backend(model, "segmenter", name, threads)
        except InputError as exc:
            if not everything:
                raise
            skipped[name] = str(exc)
    if not loaded:
        raise InputError(model, "no backend opens it: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return loaded, skipped


def benchmark(model: Path, config: BenchConfig) -> dict:
    """Run every backend at every batch; the results as a JSON-ready dict."""
    from .preprocess import normalise
    from .progress import progress_bar
    from .timing import synthetic_images, time_calls

    if min(config.batches, default=0) < 1 or config.size < 32 or config.iterations < 1 or config.warmup < 0:
        raise InputError(None, "batches must be >= 1, size >= 32, iterations >= 1 and warmup >= 0")
    loaded, skipped = open_backends(model, list(config.backends), config.threads)
    first = next(iter(loaded.values()))
    graph = GraphMetadata.from_props(first.metadata, first.path)
    rows = []
    for batch in config.batches:
        inputs = normalise(synthetic_images(batch, config.size, config.size, seed=batch), graph.mean, graph.std)
        reference = None
        for name, backend in progress_bar(loaded.items(), desc=f"bench batch {batch}", unit="backend", leave=False):
            def call(backend=backend, inputs=inputs):
                return backend.run(inputs, ("labels",))["labels"]

            labels = call()
            reference = labels if reference is None else reference
            seconds = time_calls(call, config.iterations, config.warmup)
            rows.append({"backend": name, "batch": batch,
                         **{f"p{q}_ms": 1e3 * float(np.percentile(seconds, q)) for q in PERCENTILES},
                         "images_per_s": batch / float(seconds.mean()),
                         "labels_equal_to_first": float(np.mean(labels == reference))})
    for row in rows:
        base = next((r for r in rows if r["backend"] == EAGER and r["batch"] == row["batch"]), None)
        row["vs_eager"] = row["images_per_s"] / base["images_per_s"] if base else None
    return {"device": device_name(), "versions": versions(), "model": str(model),
            "architecture": graph.architecture, "graph_precision": graph.precision,
            "config": dump_config(config), "first_backend": next(iter(loaded)), "skipped": skipped, "results": rows}


def results_stem(results: dict) -> str:
    """``runtime_<device>_<versions>``, lower-case, with only [a-z0-9.-] between underscores."""
    versions = results["versions"]
    parts = [results["device"], f"ort{versions['onnxruntime']}"]
    if "torch" in versions:
        parts.append(f"torch{versions['torch']}")
    if "tensorrt" in versions:
        parts.append(f"trt{versions['tensorrt']}")
    slug = "_".join(re.sub(r"[^a-z0-9.]+", "-", p.lower()).strip("-") for p in parts)
    return f"runtime_{slug}"


def markdown_table(results: dict) -> str:
    """The results as a markdown table; the column of ratios to PyTorch eager only where it was timed."""
    eager = any(row["backend"] == EAGER for row in results["results"])
    header = ["backend", "batch", *(f"p{q} ms" for q in PERCENTILES), "images/s", *([f"vs {EAGER}"] if eager else []),
              f"labels = {results['first_backend']}"]
    lines = [f"Device: {results['device']}; " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
             f"Input: {results['config']['size']}x{results['config']['size']}, {results['graph_precision']} graph; "
             f"{results['config']['iterations']} timed calls after {results['config']['warmup']} warm-up calls", "",
             f"| {' | '.join(header)} |", "|---|" + "---:|" * (len(header) - 1)]
    for row in results["results"]:
        ratio = ["" if row["vs_eager"] is None else f"{row['vs_eager']:.2f}x"] if eager else []
        cells = [row["backend"], str(row["batch"]), *(f"{row[f'p{q}_ms']:.1f}" for q in PERCENTILES),
                 f"{row['images_per_s']:.1f}", *ratio, f"{100 * row['labels_equal_to_first']:.2f}%"]
        lines.append(f"| {' | '.join(cells)} |")
    if results["skipped"]:
        lines += ["", *(f"Skipped {name}: {why}" for name, why in results["skipped"].items())]
    return "\n".join(lines) + "\n"


def plot_throughput(results: dict, path: Path) -> None:
    """Grouped bars: images/s per backend, one group per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = list(dict.fromkeys(r["batch"] for r in results["results"]))
    backends = list(dict.fromkeys(r["backend"] for r in results["results"]))
    width = 0.8 / len(backends)
    figure, axes = plt.subplots(figsize=(6.4, 4))
    for k, backend in enumerate(backends):
        values = [next(r["images_per_s"] for r in results["results"] if r["backend"] == backend and r["batch"] == b)
                  for b in batches]
        axes.bar(np.arange(len(batches)) + k * width, values, width, label=backend)
    axes.set_xticks(np.arange(len(batches)) + width * (len(backends) - 1) / 2, [f"batch {b}" for b in batches])
    axes.set_ylabel("images / s")
    axes.set_title(f"segmenter {results['config']['size']}x{results['config']['size']}: {results['device']}",
                   fontsize=9)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def write_results(results: dict, out: Path) -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out``."""
    stem = results_stem(results)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    write_json(paths[0], results)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown_table(results))
    plot_throughput(results, paths[2])
    return paths


def _integers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    backends = tuple(args.backend.split(",")) if args.backend else None
    config = load_config(BenchConfig, args.config, backends=backends, batches=args.batch, size=args.size,
                         iterations=args.iterations, warmup=args.warmup, threads=args.threads)
    results = benchmark(args.model, config)
    print(markdown_table(results), end="")
    for path in write_results(results, args.out):
        print(f"bench: wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="latency and throughput of the exported segmenter per backend vs PyTorch eager",
        description="Times the end-to-end segmenter on each backend (ONNX Runtime CPU/CUDA, TensorRT) and in "
        "PyTorch eager mode (where torch is installed) on the same synthetic batches: p50/p95/p99 latency, images/s, "
        "ratio to PyTorch and label agreement. Writes <out>/runtime_<device>_<versions>.json, .md (table) and .png "
        "(throughput plot). "
        "Example: wsvs bench --model runs/model --backend all --batch 1,8 --input-size 320")
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="an exported model X.onnx (X.engine beside for TensorRT, X.pt for PyTorch) or a checkpoint "
                   "with its export")
    p.add_argument("--backend", metavar="NAMES",
                   help=f"comma-separated: all (default: every one that opens the model), {', '.join(BACKENDS)}")
    p.add_argument("--batch", type=_integers, metavar="N,N", help="batch sizes (default 1,8)")
    p.add_argument("--input-size", dest="size", type=int, metavar="S", help="square input side (default 320)")
    p.add_argument("--size", dest="size", type=int, help=argparse.SUPPRESS)  # the name before --input-size
    p.add_argument("--iterations", type=int, metavar="N", help="timed calls per backend and batch (default 20)")
    p.add_argument("--warmup", type=int, metavar="N", help="untimed calls first (default 3)")
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads, 0: library default (default 0)")
    p.add_argument("--config", type=Path, metavar="YAML", help="YAML with BenchConfig fields")
    p.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                   help="output folder (default bench-results)")
    p.set_defaults(func=run)
