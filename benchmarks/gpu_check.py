"""`make gpu-check`: the GPU tests and the pooling kernel beside the numpy path, on this machine's NVIDIA GPU.

    make gpu-check [PYTHON=python3] [GPU_CHECK_OUT=runs/gpu-check]
    python3 benchmarks/gpu_check.py [--out DIR] [--batches 1 8 32 128]

Runs with the interpreter it is started with (an existing CUDA PyTorch environment will do) and installs
nothing: the repo's packages are imported from this tree through a temporary folder of links laid out as
``wsvs`` (pyproject's package-dir), also in the child processes (PYTHONPATH). The interpreter needs numpy,
OpenCV, Pillow, PyYAML, onnx, onnxruntime, pytest, pytest-benchmark and cuda-python (cuda-bindings 12 or 13)
with an NVRTC library (the nvidia-cuda-nvrtc wheel or a CUDA toolkit's); torch is optional.

Steps: nvidia-smi and the versions; ``pytest -m gpu`` on every test file with GPU tests (a file that cannot
be imported for want of a module, e.g. PyAV, is listed as not collected with that reason); the pooling
benchmark at 480x360 on the GPU and the CPU (``bench_pooling.gpu_vs_cpu_row``). Results go to
DIR/gpu_check.json and DIR/gpu_check.md, the pytest report to DIR/pytest.xml.

Exit status: 0 when all of it ran and passed, and also when the machine has no NVIDIA GPU (one line says so and
nothing runs); 1 when a test failed or errored, a GPU test was skipped although a GPU is present, or the
benchmark failed; 2 when this interpreter lacks what the check needs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CUDA_WHEELS = ("cuda-python", "cuda-pathfinder", "nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu12", "cupy-cuda13x")
NO_GPU = "no NVIDIA GPU / CUDA driver"  # the skip reason of the kernel's GPU tests
PEAK_BANDWIDTH = {"H200": 4.8e12}  # bytes/s, HBM peak from NVIDIA's data sheet, by a word of the GPU's name


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


TORCH_PROBE = (
    "import json, torch; c = torch.cuda.is_available(); print(json.dumps({'version': torch.__version__, "
    "'cuda': torch.version.cuda, 'cuda_available': c, 'device': torch.cuda.get_device_name(0) if c else None}))"
)


def environment() -> dict:
    """nvidia-smi, the driver, NVRTC and the Python packages the check uses."""
    from cuda.bindings import driver  # ImportError here: this Python lacks cuda-python

    from wsvs.runtime import cuda_api

    smi = command_output(["nvidia-smi"])
    query = command_output(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem",
         "--format=csv,noheader"]
    )  # fmt: skip
    fields = [part.strip() for part in (query.splitlines() or [""])[0].split(",")]
    name, driver_version, memory, sm_clock, memory_clock = (fields + ["?"] * 5)[:5]
    cuda_in_smi = re.search(r"CUDA Version:\s*([\d.]+)", smi)
    _, nvrtc_major, nvrtc_minor = cuda_api.nvrtc().nvrtcVersion()
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        nvrtc_path = load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception as error:  # older cuda-python without pathfinder, or a lookup it cannot explain
        nvrtc_path = f"(not reported: {error})"
    driver_api = cuda_api.check(driver.cuDriverGetVersion())
    torch_line = command_output([sys.executable, "-c", TORCH_PROBE]).splitlines()
    try:
        torch_info = json.loads(torch_line[-1])
    except (IndexError, json.JSONDecodeError):
        torch_info = {"version": None, "note": (torch_line or ["not importable"])[-1]}
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    import onnxruntime

    return {
        "gpu": name,
        "gpu_memory": memory,
        "max_clocks": f"SM {sm_clock}, memory {memory_clock}",
        "driver": driver_version,
        "cuda_driver_api": f"{driver_api // 1000}.{driver_api % 1000 // 10}",
        "cuda_in_nvidia_smi": cuda_in_smi.group(1) if cuda_in_smi else None,
        "nvrtc": f"{nvrtc_major}.{nvrtc_minor}",
        "nvrtc_library": nvrtc_path,
        "nvcc": command_output([nvcc, "--version"]).splitlines()[-1] if nvcc else None,
        "python": f"{platform.python_version()} ({sys.executable})",
        "cuda_bindings": version_of("cuda-bindings"),
        "cuda_wheels": {name: version_of(name) for name in CUDA_WHEELS if version_of(name)},
        "torch": torch_info,
        "numpy": version_of("numpy"),
        "onnxruntime": f"{onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})",
        "pytest": version_of("pytest"),
        "cpu": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "nvidia_smi": smi,
    }


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
    counts = {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in outcomes}
    return {"counts": counts, "tests": tests}


def run_gpu_tests(out: Path) -> dict:
    files, not_collected = gpu_test_files()
    for file, reason in not_collected.items():
        print(f"gpu-check: {file}: {reason}")
    report = out / "pytest.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={report}", *files]
    print("gpu-check:", " ".join(command[1:]), flush=True)
    returncode = subprocess.run(command, cwd=REPO).returncode if files else 5
    summary = junit_summary(report) if report.exists() else {"counts": {}, "tests": []}
    return {"command": " ".join(["pytest", *command[3:]]), "files": files, "not_collected": not_collected,
            "returncode": returncode, **summary}  # fmt: skip


def run_pooling(batches: list[int], superpixels: int, channels: int, peak: float | None) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_pooling

    from wsvs.cuda_kernels import pooling

    gpu = pooling.default_executor()
    copy = bench_pooling.gpu_copy_rate(gpu)
    print(f"gpu-check: device-to-device copy of 1 GiB: {copy / 1e12:.2f} TB/s (read + written)", flush=True)
    rows = []
    for batch in batches:
        row = bench_pooling.gpu_vs_cpu_row(gpu, batch, superpixels, channels)
        row["kernel_bytes_per_s"] = row["bytes_moved"] / row["kernel_s"]
        row["of_copy_rate"] = row["kernel_bytes_per_s"] / copy
        row["of_peak"] = row["kernel_bytes_per_s"] / peak if peak else None
        row["cpu_over_kernel"] = row["cpu_s"] / row["kernel_s"]
        row["cpu_over_end_to_end"] = row["cpu_s"] / row["end_to_end_s"]
        print(f"gpu-check: pooling B={batch}: {json.dumps(row)}", flush=True)
        rows.append(row)
    return {"arch": gpu.arch, "height": bench_pooling.HEIGHT, "width": bench_pooling.WIDTH, "copy_rate": copy,
            "peak_bandwidth": peak, "rows": rows}  # fmt: skip


def ratio(value: float) -> str:
    return f"{value:.0f}x" if value >= 10 else f"{value:.2g}x"


def markdown(result: dict) -> str:
    env, tests = result["environment"], result["pytest"]
    torch_info = env["torch"]
    lines = [
        "# GPU check",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- GPU: {env['gpu']} ({env['gpu_memory']}; max clocks {env['max_clocks']}), {env['cpu']}",
        f"- driver {env['driver']} (CUDA {env['cuda_in_nvidia_smi']} per nvidia-smi, "
        f"driver API {env['cuda_driver_api']})",
        f"- NVRTC {env['nvrtc']} ({env['nvrtc_library']}); cuda-bindings {env['cuda_bindings']}; nvcc: {env['nvcc']}",
        "- " + ", ".join(f"{name} {version}" for name, version in env["cuda_wheels"].items()),
        f"- Python {env['python']}; numpy {env['numpy']}; onnxruntime {env['onnxruntime']}; pytest {env['pytest']}",
        f"- torch {torch_info.get('version')} (CUDA {torch_info.get('cuda')}, sees the GPU: "
        f"{torch_info.get('cuda_available')})",
        "",
        "## GPU tests",
        "",
        f"`{tests['command']}`: " + ", ".join(f"{n} {k}" for k, n in tests["counts"].items() if n),
        "",
    ]
    for test in tests["tests"]:
        if test["outcome"] != "passed":
            lines.append(f"- {test['outcome']}: `{test['test']}`: {test['message']}")
    for file, reason in tests["not_collected"].items():
        lines.append(f"- `{file}`: {reason}")
    for problem in result["problems"]:
        lines.append(f"- problem: {problem}")
    pool = result.get("pooling")
    if pool:
        peak = pool["peak_bandwidth"]
        lines += [
            "",
            f"## Superpixel pooling at {pool['width']}x{pool['height']} ({pool['arch']})",
            "",
            "Medians. kernels: the two kernels alone, CUDA events around each launch; device: launch_pool with its "
            "output allocations and memsets; end to end: host arrays to host arrays (pageable copies); CPU: "
            "`wsvs.runtime.pooling.superpixel_pool` (numpy) on the same arrays. Bytes: labels and maps read once, "
            f"sums, counts and means written once. Device-to-device copy: {pool['copy_rate'] / 1e12:.2f} TB/s.",
            "",
            "| B | S | C | input MB | CPU ms | kernels ms | device ms | end-to-end ms | CPU / kernels "
            "| CPU / end-to-end | kernels GB/s | of copy rate |" + (f" of {peak / 1e12:.1f} TB/s |" if peak else ""),
            "|" + "---:|" * (12 + bool(peak)),
        ]
        for row in pool["rows"]:
            lines.append(
                f"| {row['batch']} | {row['superpixels']} | {row['channels']} | {row['input_bytes'] / 1e6:.1f} "
                f"| {row['cpu_s'] * 1e3:.2f} | {row['kernel_s'] * 1e3:.4f} | {row['device_pool_s'] * 1e3:.4f} "
                f"| {row['end_to_end_s'] * 1e3:.2f} | {ratio(row['cpu_over_kernel'])} "
                f"| {ratio(row['cpu_over_end_to_end'])} "
                f"| {row['kernel_bytes_per_s'] / 1e9:.0f} | {row['of_copy_rate']:.0%} |"
                + (f" {row['of_peak']:.0%} |" if peak else "")
            )
    lines += ["", "## nvidia-smi", "", "```", env["nvidia_smi"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check", help="folder for the results")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--superpixels", type=int, default=800)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--peak-bandwidth", type=float, help="the GPU's memory bandwidth in bytes/s (H200: known)")
    args = parser.parse_args(argv)
    gpus = gpu_names()
    if not gpus:
        print("gpu-check: no NVIDIA GPU on this machine (nvidia-smi missing or lists none); nothing was run")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wsvs-gpu-check-") as folder:
        try:
            link_packages(Path(folder))
            env = environment()
        except ImportError as error:
            print(f"gpu-check: {sys.executable} lacks a module the check needs: {error}")
            return 2
        except RuntimeError as error:  # cuda-python finds no driver or NVRTC although nvidia-smi lists a GPU
            print(f"gpu-check: {', '.join(gpus)} listed, but CUDA is not usable from Python: {error}")
            return 1
        print(env["nvidia_smi"])
        print(json.dumps({k: v for k, v in env.items() if k != "nvidia_smi"}, indent=1), flush=True)
        result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "environment": env, "problems": []}
        result["pytest"] = tests = run_gpu_tests(args.out)
        if tests["returncode"] not in (0, 5) or tests["counts"].get("failed") or tests["counts"].get("error"):
            result["problems"].append(f"pytest exited with {tests['returncode']}")
        if not tests["counts"].get("passed"):
            result["problems"].append("no GPU test passed")
        skipped_for_gpu = [t["test"] for t in tests["tests"] if t["outcome"] == "skipped" and NO_GPU in t["message"]]
        if skipped_for_gpu:
            result["problems"].append(f"GPU tests skipped although nvidia-smi lists a GPU: {skipped_for_gpu}")
        peak = args.peak_bandwidth or next((v for k, v in PEAK_BANDWIDTH.items() if k in env["gpu"]), None)
        try:
            result["pooling"] = run_pooling(args.batches, args.superpixels, args.channels, peak)
        except Exception as error:  # recorded with the rest: the results written so far stay useful
            result["problems"].append(f"pooling benchmark failed: {type(error).__name__}: {error}")
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    print(f"gpu-check: results in {args.out}/gpu_check.md and gpu_check.json;",
          "; ".join(result["problems"]) or "all passed")  # fmt: skip
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
