"""`make gpu-check` (benchmarks/gpu_check.py) on a machine without a GPU: its arguments, its environment report
and the report it writes saying the GPU is absent; and the report's tables for a GPU run's results."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts its folder of links first on both
    monkeypatch.delenv("PYTHONPATH", raising=False)
    return module


def test_arguments(gpu_check):
    args = gpu_check.parse_args(["--batches", "2", "16", "--superpixels", "600"])
    assert (args.batches, args.superpixels, args.channels) == ([2, 16], 600, 5)
    assert gpu_check.parse_args([]).out == REPO / "benchmarks" / "results"


def test_without_a_gpu_it_writes_a_report_saying_so(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "gpu_names", lambda: [])  # also on a machine that has one
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "no NVIDIA GPU on this machine" in capsys.readouterr().out
    written = sorted(path.name for path in tmp_path.iterdir())
    assert len(written) == 2 and written[0].startswith("gpu_check_no-gpu_driver-none_")
    assert written[0].endswith(".json") and written[1] == written[0].removesuffix(".json") + ".md"
    result = json.loads((tmp_path / written[0]).read_text())
    assert result["gpu_present"] is False and result["problems"] == []
    assert set(result["steps"]) == {"gpu-tests", "pooling", "torch", "ort-cuda", "tensorrt"}
    assert {step["status"] for step in result["steps"].values()} == {"skipped"}
    doctor = {line.split()[0]: line for line in result["environment"]["doctor"]}
    assert {"python", "numpy", "onnxruntime", "cuda", "nvrtc", "tensorrt", "cupy", "auto"} <= set(doctor)
    assert result["environment"]["packages"]["numpy"]
    assert "**No NVIDIA GPU on this machine**" in (tmp_path / written[1]).read_text()


def test_report_of_a_gpu_run(gpu_check):
    pooling_row = {"batch": 128, "superpixels": 768, "channels": 5, "input_bytes": 530.8e6, "cpu_s": 0.834,
                   "kernel_s": 5.42e-4, "end_to_end_s": 0.259, "kernel_bytes_per_s": 3.1e12, "of_copy_rate": 0.745}
    steps = {
        "gpu-tests": {"status": "passed", "seconds": 20.0, "tests": [], "not_collected": {
            "tests/test_runtime.py": "not collected: needs the module av, not installed here"}},
        "pooling": {"status": "passed", "seconds": 30.0, "arch": "sm_90", "height": 360, "width": 480,
                    "copy_rate": 4.16e12, "copy_measured_by": "CuPy 14.2.0 copyto", "rows": [pooling_row]},
        "torch": {"status": "passed", "seconds": 9.0, "rows": [{"shape": [4, 3, 180, 320], "ms": 3.5}]},
        "ort-cuda": {"status": "skipped", "reason": "onnxruntime 1.32.0 has no CUDA provider"},
        "tensorrt": {"status": "failed", "reason": "[1, 3, 321, 321]: labels equal on 99.5000%",
                     "rows": [{"shape": [1, 3, 321, 321], "ms": 1.25, "labels_equal": 0.995}]},
    }
    env = {"gpu": "NVIDIA H200", "driver": "580.159.04", "gpu_memory": "143771 MiB", "max_sm_clock": "1980 MHz",
           "max_memory_clock": "3201 MHz", "python": "3.12.3", "cpu": "16 cores", "doctor": ["auto ort-cpu"],
           "packages": {"torch": "2.11.0+cu130", "cuda-bindings": "13.3.1"}, "nvidia_smi": "(table)"}
    text = gpu_check.markdown({"command": "python3 gpu_check.py", "gpu_present": True, "environment": env,
                               "steps": steps})
    assert "| tensorrt | failed |  | [1, 3, 321, 321]: labels equal on 99.5000% |" in text
    assert "| 128 | 768 | 5 | 530.8 | 834.00 | 0.5420 | 259.00 | 3100 | 74% |" in text
    assert "| torch | 4x3x180x320 | 3.50 | (reference) |" in text
    assert "| tensorrt | 1x3x321x321 | 1.25 | 99.5000% |" in text
    assert "needs the module av" in text and "CuPy 14.2.0 copyto): 4.16 TB/s" in text
    expected = "gpu_check_NVIDIA-H200_driver-580.159.04_torch-2.11.0+cu130_cuda-bindings-13.3.1"
    assert gpu_check.result_name(env) == expected


def test_backend_parity_rows_fail_when_labels_differ(gpu_check, tmp_path):
    """The ort-cuda and tensorrt steps' comparison with the torch labels, run here on ONNX Runtime's CPU provider."""
    import numpy as np
    from test_gpu_environment import write_tiny_model

    from wsvs.runtime.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(write_tiny_model(tmp_path) / "model.onnx")
    check = object.__new__(gpu_check.ModelCheck)  # without torch and CUDA: only the comparison is under test
    check.inputs = [np.random.default_rng(0).standard_normal((2, 3, 16, 24), dtype=np.float32)]
    check.references = [backend.run(check.inputs[0], ("labels",))["labels"]]
    same = check.backend_rows(backend)
    assert same["status"] == "passed" and same["rows"][0]["labels_equal"] == 1.0 and same["rows"][0]["ms"] > 0
    check.references[0] = check.references[0].copy()
    check.references[0][0, :4] = (check.references[0][0, :4] + 1) % 3  # 4 of 32 rows: 12.5% of the labels
    differ = check.backend_rows(backend)
    assert differ["status"] == "failed" and differ["reason"] == "[2, 3, 16, 24]: labels equal on 87.5000%"


def test_an_interpreter_without_opencv_is_told_so_in_one_line(tmp_path):
    code = ("import runpy, sys; sys.modules['cv2'] = None; "  # what Python does where OpenCV is not installed
            f"sys.argv = ['gpu_check.py', '--out', {str(tmp_path)!r}]; "
            f"runpy.run_path({str(REPO / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stdout == f"gpu-check: {sys.executable} lacks the module cv2, which the check needs\n"
    assert not list(tmp_path.iterdir())
