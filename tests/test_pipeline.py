"""`wsvs train`: stages run in order, are skipped when their inputs are unchanged, and rerun when they change."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from wsvs.runtime.config import load_config
from wsvs.training.pipeline import PipelineConfig, preset_path, run_pipeline


def test_presets_load() -> None:
    demo = load_config(PipelineConfig, preset_path("demo"))
    paper = load_config(PipelineConfig, preset_path("paper"))
    assert demo.encoder.batch_norm and demo.encoder.width < 1
    # the paper's optimisation settings (§5.1)
    encoder = paper.encoder
    assert (encoder.width, encoder.input_size, encoder.batch_size, encoder.lr) == (1.0, 321, 14, 1e-3)


def test_stages_are_cached_and_rerun_on_change(world_dir: Path, tmp_path: Path, capsys) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({
        "data": str(world_dir / "images"),
        "encoder": {"width": 0.125, "batch_norm": True, "input_size": 96, "epochs": 1},
        "eval_cam": {"split": "val", "cam_threshold": 0.3},
    }))
    out = tmp_path / "run"
    report = run_pipeline(load_config(PipelineConfig, config_file), out)
    assert set(report["miou"]) == {"cam_baseline"} and 0 <= report["miou"]["cam_baseline"] <= 1
    first = {stage: json.loads((out / stage / "stage.json").read_text()) for stage in ("encoder", "eval_cam")}
    weights_mtime = (out / "encoder" / "model.safetensors").stat().st_mtime_ns
    assert (out / "report.md").read_text().count("![") >= 1  # overlays are linked from the report

    capsys.readouterr()
    run_pipeline(load_config(PipelineConfig, config_file), out)
    assert capsys.readouterr().out.count("up to date, skipped") == 2
    assert (out / "encoder" / "model.safetensors").stat().st_mtime_ns == weights_mtime

    changed = load_config(PipelineConfig, config_file)
    changed.eval_cam.cam_threshold = 0.5
    run_pipeline(changed, out)
    printed = capsys.readouterr().out
    assert "[encoder] up to date, skipped" in printed and "[eval_cam] running" in printed
    second = json.loads((out / "eval_cam" / "stage.json").read_text())
    assert second["key"] != first["eval_cam"]["key"]
    assert second["result"]["cam_threshold"] == 0.5
