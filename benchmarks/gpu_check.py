"""`make gpu-check`: what the repo's GPU code does on this machine's NVIDIA GPU, in one report.

    make gpu-check [PYTHON=python3] [GPU_CHECK_OUT=benchmarks/results]
    python3 benchmarks/gpu_check.py [--out DIR] [--batches 1 8 32 128]

Runs with the interpreter it is started with and installs nothing, reaching no network: the repo's packages are
imported from this tree through a temporary folder of links laid out as ``wsvs`` (pyproject's package-dir), also
in the child processes (PYTHONPATH). It needs numpy, OpenCV and Pillow (the runtime's modules import them) and
pytest; the GPU steps cuda-bindings with an NVRTC library (a wheel or a CUDA toolkit's) and a CUDA PyTorch for
the model; CuPy, onnx, onnxruntime-gpu and TensorRT are used where present. Meant to finish in under 5 minutes.

Steps, each recorded as passed, failed or skipped with its reason:

- environment: nvidia-smi, the driver, `wsvs doctor`'s lines (ONNX Runtime and providers, CUDA, NVRTC, TensorRT,
  CuPy), torch, the Python packages;
- gpu-tests: ``pytest -m gpu`` on every test file with GPU tests (a file that cannot be imported for want of a
  module is listed as not collected, with that module);
- pooling: the kernel compiled with NVRTC, its results against the numpy reference, and its effective bandwidth
  against the device-to-device copy bandwidth (CuPy, else torch), target >= 70% at the largest batch;
- torch: latency of the paper-size model (VGG-16 encoder, 20 classes) on CUDA, images at 321x321 and 4 video
  frames at 320x180;
- ort-cuda, tensorrt: the same model exported to ONNX, on ONNX Runtime's CUDA provider and as a TensorRT engine:
  labels against torch and latency (skipped, with the reason, where the package is missing).

Writes ``gpu_check_<device>_<versions>.json`` and ``.md`` into DIR (default benchmarks/results). On a machine
without an NVIDIA GPU it still writes them, saying so, with the GPU steps skipped.

Exit status: 0 when every step that could run passed (also without a GPU); 1 when a step failed or a GPU test
was skipped for want of a GPU although nvidia-smi lists one; 2 when the interpreter lacks a module the check
needs (named in one line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NO_GPU = "no NVIDIA GPU / CUDA driver"  # the skip reason of the kernel's GPU tests
COPY_TARGET = 0.70  # the pooling kernel's effective bandwidth, as a fraction of the device's copy bandwidth
PACKAGES = ("numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu12",
            "tensorrt-cu13", "cuda-python", "cuda-bindings", "cuda-pathfinder", "nvidia-cuda-nvrtc",
            "nvidia-cuda-nvrtc-cu12", "cupy-cuda12x", "cupy-cuda13x", "pytest")
LATENCY_SHAPES = ((1, 3, 321, 321), (4, 3, 180, 320))  # an image at the training size; 4 frames of 320x180 video


def gpu_names() -> list[str]:
    """The GPUs nvidia-smi lists; empty when it is missing or fails (no driver, no GPU)."""
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if line.startswith("GPU ")] if result.returncode == 0 else []


def link_packages(folder: Path) -> Path:
    """Lay out ``folder/wsvs/<name>`` as links to this tree's package folders (pyproject's package-dir) and put
    ``folder`` first on this process's path and on its children's (PYTHONPATH)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for name, source in config["package-dir"].items():
        parent, _, leaf = name.rpartition(".")
        target = folder.joinpath(*parent.split("."), leaf)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(REPO / source, target_is_directory=True)
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])
    return folder


def command_output(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"({error})"
    return (result.stdout + result.stderr).strip()


def version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment(gpus: list[str]) -> dict:
    """nvidia-smi, `wsvs doctor`'s lines and the versions of the packages the check can use."""
    from wsvs.runtime import doctor

    lines, _ = doctor.report(None)
    env = {
        "gpus": gpus,
        "doctor": lines,
        "python": f"{platform.python_version()} ({sys.executable})",
        "packages": {name: version for name in PACKAGES if (version := version_of(name))},
        "cpu": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "nvidia_smi": command_output(["nvidia-smi"]) if gpus else None,
    }
    if gpus:
        query = command_output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                "clocks.max.mem", "--format=csv,noheader"])
        fields = [part.strip() for part in (query.splitlines() or [""])[0].split(",")]
        env |= dict(zip(("gpu", "driver", "gpu_memory", "max_sm_clock", "max_memory_clock"), fields))
    return env


def result_name(env: dict) -> str:
    """gpu_check_<device>_<driver, torch, cuda-bindings versions>, in characters safe for a file name."""
    packages = env["packages"]
    parts = [env.get("gpu") or "no-gpu", f"driver-{env.get('driver', 'none')}", f"torch-{packages.get('torch')}",
             f"cuda-bindings-{packages.get('cuda-bindings')}"]
    return "gpu_check_" + "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", part).strip("-") for part in parts)


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def run_step(name: str, step: Callable[[], dict]) -> dict:
    """A step's result; an exception is recorded as the step's failure, and the other steps still run."""
    started = time.perf_counter()
    try:
        result = step()
    except Exception as error:
        result = {"status": "failed", "reason": f"{type(error).__name__}: {str(error).strip()[:2000]}"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"gpu-check: {name}: {result['status']} ({result['seconds']} s) {result.get('reason', '')}", flush=True)
    return result


# ---- GPU tests ----


def gpu_test_files() -> tuple[list[str], dict[str, str]]:
    """Test files holding GPU tests that collect here, and {file: reason} for those that lack a module."""
    candidates = [
        str(path.relative_to(REPO))
        for path in sorted([*REPO.glob("tests/test_*.py"), *REPO.glob("benchmarks/bench_*.py")])
        if "mark.gpu" in path.read_text()
    ]
    files, not_collected = [], {}
    for file in candidates:
        probe = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", file],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", probe.stdout + probe.stderr)
        if probe.returncode != 0 and missing:
            not_collected[file] = f"not collected: needs the module {missing.group(1)}, not installed here"
        elif probe.returncode != 5:  # 5: no GPU test in the file is selected
            files.append(file)  # collection errors of any other kind show in the real run
    return files, not_collected


def junit_summary(report: Path) -> dict:
    """Outcome counts and each test's outcome (with the skip or failure message) from pytest's JUnit XML."""
    tests = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome, message = {"failure": "failed"}.get(tag, tag), element.get("message", "")
                break
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "message": message})
    outcomes = ("passed", "failed", "error", "skipped")
    return {"counts": {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in outcomes}, "tests": tests}


def gpu_tests() -> dict:
    files, not_collected = gpu_test_files()
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "pytest.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                   f"--junitxml={report}", *files]
        returncode = subprocess.run(command, cwd=REPO, timeout=240).returncode if files else 5
        summary = junit_summary(report) if report.exists() else {"counts": {}, "tests": []}
    problems = []
    if returncode not in (0, 5) or summary["counts"].get("failed") or summary["counts"].get("error"):
        problems.append(f"pytest exited with {returncode}")
    if not summary["counts"].get("passed"):
        problems.append("no GPU test passed")
    for test in summary["tests"]:
        if test["outcome"] == "skipped" and NO_GPU in test["message"]:
            problems.append(f"{test['test']} skipped for want of a GPU, although nvidia-smi lists one")
    return {"status": "failed" if problems else "passed", "reason": "; ".join(problems),
            "command": " ".join(["pytest -m gpu", *files]), "files": files,
            "not_collected": not_collected, **summary}


# ---- the pooling kernel ----


def device_copy_rate(nbytes: int = 2**30) -> tuple[float, str]:
    """Bytes read + written per second by a device-to-device copy of ``nbytes`` (median of 5 after a warm-up,
    CUDA events), with CuPy, else torch; and which of them measured it."""
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        source, target = cupy.ones(nbytes // 4, cupy.float32), cupy.empty(nbytes // 4, cupy.float32)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        timings = []
        for _ in range(6):
            start.record()
            cupy.copyto(target, source)
            end.record()
            end.synchronize()
            timings.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        return 2 * nbytes / statistics.median(timings[1:]), f"CuPy {cupy.__version__} copyto"
    import torch

    source, target = torch.ones(nbytes // 4, device="cuda"), torch.empty(nbytes // 4, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    timings = []
    for _ in range(6):
        start.record()
        target.copy_(source)
        end.record()
        end.synchronize()
        timings.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / statistics.median(timings[1:]), f"torch {torch.__version__} copy_"


def pooling(batches: list[int], superpixels: int, channels: int) -> dict:
    """Compile (NVRTC, at first use), parity with numpy (``gpu_vs_cpu_row`` asserts it) and bandwidth."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_pooling

    from wsvs.cuda_kernels import pooling as kernels

    gpu = kernels.default_executor()
    copy, measured_by = device_copy_rate()
    rows = []
    for batch in batches:
        row = bench_pooling.gpu_vs_cpu_row(gpu, batch, superpixels, channels)
        row["kernel_bytes_per_s"] = row["bytes_moved"] / row["kernel_s"]
        row["of_copy_rate"] = row["kernel_bytes_per_s"] / copy
        rows.append(row)
    largest = rows[-1]["of_copy_rate"]
    reason = (f"at B={batches[-1]} the kernels move {largest:.0%} of the copy bandwidth, under the "
              f"{COPY_TARGET:.0%} target" if largest < COPY_TARGET else "")
    return {"status": "failed" if reason else "passed", "reason": reason, "arch": gpu.arch,
            "height": bench_pooling.HEIGHT, "width": bench_pooling.WIDTH, "copy_rate": copy,
            "copy_measured_by": measured_by, "rows": rows}


# ---- the model on torch, ONNX Runtime CUDA and TensorRT ----


def median_ms(run: Callable[[], object], synchronize: Callable[[], object], iterations: int = 20) -> float:
    for _ in range(3):
        run()
    synchronize()
    timings = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        synchronize()
        timings.append(time.perf_counter() - start)
    return 1e3 * statistics.median(timings)


class ModelCheck:
    """The paper-size model (random weights: latency and parity do not depend on training) on torch CUDA, and the
    reference labels the other backends must give."""

    top_k = 3

    def __init__(self) -> None:
        import torch

        from wsvs.runtime.contract import ArchConfig, ModelMetadata
        from wsvs.training.graphs import graph_modules
        from wsvs.training.models import WSVSModel

        torch.manual_seed(0)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references
        arch = ArchConfig(num_classes=20)
        self.model = WSVSModel(arch).eval()
        self.meta = ModelMetadata(class_names=[f"class{i}" for i in range(20)], arch=arch)
        self.segmenter = graph_modules(self.model, self.meta, self.top_k)["segmenter"].cuda()
        rng = np.random.default_rng(0)
        self.inputs = [rng.standard_normal(shape, dtype=np.float32) for shape in LATENCY_SHAPES]
        self.torch = torch
        self.references = [self.run_torch(x)["labels"] for x in self.inputs]

    def run_torch(self, inputs) -> dict:
        torch = self.torch
        with torch.no_grad():
            outputs = self.segmenter(torch.from_numpy(inputs).cuda())
        return {"labels": outputs[3].cpu().numpy()}

    def torch_latency(self) -> dict:
        torch = self.torch
        rows = []
        for x in self.inputs:
            device_inputs = torch.from_numpy(x).cuda()
            with torch.no_grad():
                ms = median_ms(lambda d=device_inputs: self.segmenter(d), torch.cuda.synchronize)
            rows.append({"shape": list(x.shape), "ms": ms})
        return {"status": "passed", "torch": torch.__version__, "rows": rows}

    def backend_rows(self, backend) -> dict:
        """Labels against torch (fraction equal) and latency of a runtime backend, per input shape."""
        rows = []
        for x, reference in zip(self.inputs, self.references):
            labels = backend.run(x, ("labels",))["labels"]
            agreement = float(np.mean(labels == reference))
            rows.append({"shape": list(x.shape), "labels_equal": agreement,
                         "ms": median_ms(lambda b=backend, x=x: b.run(x, ("labels",)), lambda: None)})
        problems = [f"{row['shape']}: labels equal on {row['labels_equal']:.4%}" for row in rows
                    if row["labels_equal"] < 0.999]
        return {"status": "failed" if problems else "passed", "reason": "; ".join(problems),
                "backend": backend.describe(), "rows": rows}

    def onnx(self, folder: Path) -> Path:
        from wsvs.export import onnx_export

        paths = onnx_export.GraphPaths.beside(folder / "model.onnx")
        if not paths.segmenter.exists():
            onnx_export.export_onnx(self.model, self.meta, paths, 17, self.top_k)
        return paths.segmenter

    def ort_cuda(self, folder: Path) -> dict:
        try:
            import onnx  # noqa: F401  (the model's export)
            import onnxruntime
        except ImportError as error:
            return skipped(f"{error.name} is not installed")
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return skipped(f"onnxruntime {onnxruntime.__version__} has no CUDA provider (onnxruntime-gpu is not "
                           "installed)")
        from wsvs.runtime.backends import OnnxRuntimeBackend

        return self.backend_rows(OnnxRuntimeBackend(self.onnx(folder), "ort-cuda"))

    def tensorrt(self, folder: Path) -> dict:
        try:
            import onnx
            import tensorrt  # noqa: F401
        except ImportError as error:
            return skipped(f"{error.name} is not installed")

        from wsvs.export import onnx_export, tensorrt_build
        from wsvs.runtime.backends import TensorRTBackend

        segmenter = self.onnx(folder)
        engine = folder / "model.engine"
        shapes = ((1, 3, 180, 180), (1, 3, 321, 321), (4, 3, 321, 321))  # covers LATENCY_SHAPES
        metadata = onnx_export.read_metadata(onnx.load(str(segmenter), load_external_data=False))
        tensorrt_build.build_engine(segmenter, engine, shapes, "fp32", metadata)
        return self.backend_rows(TensorRTBackend(engine))


# ---- the report ----


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# GPU check", "", f"Command: `{result['command']}`", ""]
    if not result["gpu_present"]:
        lines += ["**No NVIDIA GPU on this machine** (nvidia-smi missing or lists none): the GPU steps were skipped.",
                  ""]
    else:
        lines += [f"- GPU: {env.get('gpu')} ({env.get('gpu_memory')}; max clocks SM {env.get('max_sm_clock')}, "
                  f"memory {env.get('max_memory_clock')}), driver {env.get('driver')}", ""]
    lines += [f"- Python {env['python']}; {env['cpu']}",
              "- " + ", ".join(f"{name} {version}" for name, version in env["packages"].items()), "",
              "`wsvs doctor`:", "", "```", *env["doctor"], "```", "", "## Steps", "",
              "| step | status | s | detail |", "|---|---|---:|---|"]
    for name, step in result["steps"].items():
        detail = str(step.get("reason", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {step['status']} | {step.get('seconds', '')} | {detail} |")
    tests = result["steps"].get("gpu-tests", {})
    for test in tests.get("tests", []):
        if test["outcome"] != "passed":
            lines.append(f"- {test['outcome']}: `{test['test']}`: {test['message']}")
    for file, reason in tests.get("not_collected", {}).items():
        lines.append(f"- `{file}`: {reason}")
    pool = result["steps"].get("pooling", {})
    if pool.get("rows"):
        lines += ["", f"## Superpixel pooling at {pool['width']}x{pool['height']} ({pool['arch']})", "",
                  "Medians. kernels: the two kernels alone, CUDA events around each launch; end to end: host arrays "
                  "to host arrays; CPU: the numpy reference. Bytes: labels and maps read once, sums, counts and "
                  f"means written once. Device-to-device copy ({pool['copy_measured_by']}): "
                  f"{pool['copy_rate'] / 1e12:.2f} TB/s (read + written); target {COPY_TARGET:.0%} of it.", "",
                  "| B | S | C | input MB | CPU ms | kernels ms | end-to-end ms | kernels GB/s | of copy rate |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in pool["rows"]:
            lines.append(f"| {row['batch']} | {row['superpixels']} | {row['channels']} | "
                         f"{row['input_bytes'] / 1e6:.1f} | {row['cpu_s'] * 1e3:.2f} | {row['kernel_s'] * 1e3:.4f} | "
                         f"{row['end_to_end_s'] * 1e3:.2f} | {row['kernel_bytes_per_s'] / 1e9:.0f} | "
                         f"{row['of_copy_rate']:.0%} |")
    model_rows = [(name, row) for name in ("torch", "ort-cuda", "tensorrt")
                  for row in result["steps"].get(name, {}).get("rows", [])]
    if model_rows:
        lines += ["", "## Model latency (VGG-16 encoder, 20 classes, fp32, median of 20)", "",
                  "| backend | input | ms | labels equal to torch |", "|---|---|---:|---:|"]
        for name, row in model_rows:
            agreement = f"{row['labels_equal']:.4%}" if "labels_equal" in row else "(reference)"
            lines.append(f"| {name} | {'x'.join(map(str, row['shape']))} | {row['ms']:.2f} | {agreement} |")
    if env.get("nvidia_smi"):
        lines += ["", "## nvidia-smi", "", "```", env["nvidia_smi"], "```"]
    return "\n".join(lines) + "\n"


def run_steps(args: argparse.Namespace, gpus: list[str]) -> dict[str, dict]:
    names = ("gpu-tests", "pooling", "torch", "ort-cuda", "tensorrt")
    if not gpus:
        return {name: skipped("no NVIDIA GPU on this machine") for name in names}
    steps = {"gpu-tests": run_step("gpu-tests", gpu_tests),
             "pooling": run_step("pooling", lambda: pooling(args.batches, args.superpixels, args.channels))}
    try:
        check = ModelCheck()
    except Exception as error:  # no torch, or torch without CUDA: the model steps cannot run
        reason = f"the torch model does not run on CUDA here: {type(error).__name__}: {error}"
        return steps | {name: skipped(reason) for name in names[2:]}
    with tempfile.TemporaryDirectory(prefix="wsvs-gpu-check-model-") as folder:
        steps["torch"] = run_step("torch", check.torch_latency)
        steps["ort-cuda"] = run_step("ort-cuda", lambda: check.ort_cuda(Path(folder)))
        steps["tensorrt"] = run_step("tensorrt", lambda: check.tensorrt(Path(folder)))
    return steps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder for the results")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128],
                        help="pooling batch sizes (480x360 images); the target applies to the largest")
    parser.add_argument("--superpixels", type=int, default=800)
    parser.add_argument("--channels", type=int, default=5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpus = gpu_names()
    with tempfile.TemporaryDirectory(prefix="wsvs-gpu-check-") as folder:
        link_packages(Path(folder))
        try:
            env = environment(gpus)
        except ImportError as error:
            print(f"gpu-check: {sys.executable} lacks the module {error.name}, which the check needs")
            return 2
        print("\n".join(env["doctor"]), flush=True)
        result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "gpu_present": bool(gpus),
                  "environment": env, "steps": run_steps(args, gpus)}
    result["problems"] = [f"{name}: {step['reason']}" for name, step in result["steps"].items()
                          if step["status"] == "failed"]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / result_name(env)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{stem}.md").write_text(markdown(result))
    if not gpus:
        print("gpu-check: no NVIDIA GPU on this machine (nvidia-smi missing or lists none); GPU steps skipped")
    print(f"gpu-check: results in {stem}.md and .json;", "; ".join(result["problems"]) or "no step failed")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
