"""`wsvs train`: stages run in order, are skipped when their inputs are unchanged, and rerun when they change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from wsvs.runtime.config import load_config
from wsvs.training.pipeline import PipelineConfig, preset_path, run_pipeline


def test_presets_load() -> None:
    demo = load_config(PipelineConfig, preset_path("demo"))
    paper = load_config(PipelineConfig, preset_path("paper"))
    assert demo.encoder.batch_norm and demo.encoder.width < 1
    # the other demo worlds: the demo's recipe on worlds of another design
    for name in ("demo-confusable", "demo-loose"):
        other = load_config(PipelineConfig, preset_path(name))
        assert other.encoder == demo.encoder and other.world != demo.world
    # the paper's optimisation settings (§5.1)
    encoder = paper.encoder
    assert (encoder.width, encoder.input_size, encoder.batch_size, encoder.lr) == (1.0, 321, 14, 1e-3)


STAGES = ("world", "encoder", "eval_cam", "crawl", "segment_videos", "decoder", "adapt", "evaluate")


@pytest.mark.model
def test_stages_are_cached_and_rerun_on_change(tmp_path: Path, capsys) -> None:
    """The whole chain on a tiny world (its videos crawled from 127.0.0.1), then cached, then partly rerun."""
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({
        "world": {"classes": ["ant", "bee"], "image_size": 64, "train_images": 40, "val_images": 8,
                  "videos_per_class": 2, "misleading_per_class": 1, "video_frames": [20, 20]},
        "encoder": {"width": 0.125, "batch_norm": True, "input_size": 64, "epochs": 1},
        "eval_cam": {"split": "val", "cam_threshold": 0.3},
        "crawl": {"threshold": 0.0, "window": 1.0},  # an encoder of one epoch: let every video through
        "segment_videos": {"threshold": 0.0},
        "decoder": {"epochs": 1},
        "adapt": {"epochs": 1, "min_foreground": 0.0},
    }))
    out = tmp_path / "run"
    report = run_pipeline(load_config(PipelineConfig, config_file), out)
    assert set(report["miou"]) == {"cam_baseline", "decoder", "adapted"}
    assert all(0 <= value <= 1 for value in report["miou"].values())
    assert report["cam_single_scale"]["cam_recall"] <= report["cam_recall"]  # the max over scales only widens
    assert report["crawl"]["ant"]["listed"] == 2 and report["decoder_frames"]["used"] > 0
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    first = {stage: json.loads((out / stage / "stage.json").read_text()) for stage in STAGES}
    weights_mtime = (out / "decoder" / "model.safetensors").stat().st_mtime_ns
    markdown = (out / "report.md").read_text()
    assert markdown.count("![") >= 3 and "+ domain adaptation" in markdown  # overlays and Table 1

    capsys.readouterr()
    run_pipeline(load_config(PipelineConfig, config_file), out)
    assert capsys.readouterr().out.count("up to date, skipped") == len(STAGES)
    assert (out / "decoder" / "model.safetensors").stat().st_mtime_ns == weights_mtime

    changed = load_config(PipelineConfig, config_file)
    changed.adapt.lr = 1e-5
    # How the crawl uses the network is no reason to crawl again (a rerun with them resumes the crawl).
    changed.crawl.sleep_requests_s, changed.crawl.max_requests = 2.0, 1
    run_pipeline(changed, out)
    printed = capsys.readouterr().out
    assert "[crawl] up to date, skipped" in printed
    assert "[decoder] up to date, skipped" in printed and "[adapt] running" in printed
    assert "[evaluate] running" in printed and "[eval_cam] up to date, skipped" in printed
    assert json.loads((out / "adapt" / "stage.json").read_text())["key"] != first["adapt"]["key"]


def test_a_killed_stage_resumes_only_on_the_inputs_it_started_with(tmp_path: Path) -> None:
    """A stage killed mid-work keeps its partial outputs for a rerun on the same inputs; after its inputs
    changed (an earlier stage rerun with other settings), the partial outputs of the old inputs are dropped."""
    from wsvs.training.pipeline import run_stage

    seen: list[list[str]] = []

    def killed(folder: Path) -> dict:
        seen.append(sorted(p.name for p in folder.glob("*")))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"part-{len(seen)}").write_text("done")
        raise KeyboardInterrupt

    for inputs in ({"masks": "a"}, {"masks": "a"}, {"masks": "b"}):
        with pytest.raises(KeyboardInterrupt):
            run_stage(tmp_path, "adapt", inputs, killed)
    assert seen == [[], ["part-1"], []]
    (tmp_path / ".adapt.started.json").unlink()  # a partial folder of unknown inputs
    record = run_stage(tmp_path, "adapt", {"masks": "b"}, lambda folder: {"files": len(list(folder.glob("*")))})
    assert record["result"] == {"files": 0}


def test_seeds_table_reports_mean_min_max_and_per_seed_margins() -> None:
    from wsvs.training.pipeline import PipelineConfig, seeded, seeds_markdown, seeds_summary

    config = seeded(PipelineConfig(), 7)
    assert {config.world.seed, config.encoder.seed, config.decoder.seed, config.adapt.seed} == {7}
    reports = {0: {"miou": {"cam_baseline": 0.40, "decoder": 0.50, "adapted": 0.52}, "encoder_map": 0.95,
                   "cam_single_scale": {"cam_recall": 0.6}, "adaptation": {"accepted": True}},
               1: {"miou": {"cam_baseline": 0.30, "decoder": 0.42, "adapted": 0.41}, "encoder_map": 0.91,
                   "cam_single_scale": {"cam_recall": 0.7}, "adaptation": {"accepted": False}}}
    summary = seeds_summary(reports)
    assert summary["stats"]["decoder_margin"] == pytest.approx({"mean": 11.0, "min": 10.0, "max": 12.0})
    assert summary["seeds"]["1"]["adaptation_gain"] == pytest.approx(-1.0)
    assert summary["order_holds"] == {"0": True, "1": False}
    markdown = seeds_markdown(summary)
    assert "| decoder - CAM | 11.0 | 10.0 | 12.0 | +10.0 | +12.0 |" in markdown
    assert "| encoder val mAP | 0.930 | 0.910 | 0.950 | 0.950 | 0.910 |" in markdown
    assert "| CAM recall of object pixels, one scale (%) | 65.0 | 60.0 | 70.0 | 60.0 | 70.0 |" in markdown
    assert "| adaptation accepted | | | | yes | no |" in markdown and "holds in 1 of 2 seeds" in markdown
    assert "zero-shot" not in markdown
    for seed, report in reports.items():  # the real-data world's reports carry the reference rows and the J
        report["miou"] |= {"zero_shot": 0.3, "upper_bound": 0.6 + seed / 10}
        report["video_j"] = {"mean_iou": 0.5}
    markdown = seeds_markdown(seeds_summary(reports))
    assert "| decoder on DAVIS masks (upper bound) | 65.0 | 60.0 | 70.0 | 60.0 | 70.0 |" in markdown
    assert "| zero-shot ImageNet CAM (no training) | 30.0 |" in markdown
    assert "| video masks J (§3.2) | 0.500 |" in markdown


def test_train_and_demo_are_subcommands() -> None:
    from wsvs.runtime.cli import build_parser
    from wsvs.training.pipeline import run_train

    demo = build_parser().parse_args(["demo", "--out", "runs/demo"])
    assert demo.func is run_train and demo.preset == "demo" and demo.seeds is None
    seeds = build_parser().parse_args(["demo", "--out", "runs/seeds", "--seeds", "0,1,2"])
    assert seeds.seeds == [0, 1, 2]
    train = build_parser().parse_args(["train", "--preset", "paper", "--out", "runs/paper", "--data", "VOC2012"])
    assert train.func is run_train and train.data == Path("VOC2012")
