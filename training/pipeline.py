"""`wsvs train` and `wsvs demo`: every stage in order, each cached and skipped when its inputs are unchanged.

A stage's outputs live in ``<out>/<stage>/``; ``stage.json`` is written last and records a fingerprint of the
stage's config and of the stages it reads from, so a rerun skips finished stages and a killed stage resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from wsvs.runtime.config import dump_config, load_config
from wsvs.runtime.io import read_json, write_json

from .cam import EvalCamConfig
from .train_encoder import TrainEncoderConfig
from .world import WorldConfig

STAGE_FILE = "stage.json"
PRESETS = ("demo", "paper")


@dataclass
class PipelineConfig:
    """The whole pipeline. ``data`` is a VOC-layout image set; without it the synthetic world is generated."""

    data: Path | None = None
    world: WorldConfig = field(default_factory=WorldConfig)
    encoder: TrainEncoderConfig = field(default_factory=TrainEncoderConfig)
    eval_cam: EvalCamConfig = field(default_factory=EvalCamConfig)


def preset_path(name: str) -> Path:
    """The YAML file of a named preset shipped with the package."""
    return Path(str(resources.files("wsvs.training") / "presets" / f"{name}.yaml"))


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(out: Path, name: str, inputs: dict[str, Any], work: Callable[[Path], dict[str, Any]]) -> dict:
    """Run ``work(folder)`` unless ``folder/stage.json`` records the same inputs; returns the stage record.

    A stage whose inputs changed starts from an empty folder; one that was killed resumes in place.
    """
    folder = out / name
    key = fingerprint(inputs)
    record_path = folder / STAGE_FILE
    if record_path.is_file():
        record = read_json(record_path)
        if record.get("key") == key:
            print(f"[{name}] up to date, skipped", flush=True)
            return record
        shutil.rmtree(folder)
    print(f"[{name}] running", flush=True)
    started = time.perf_counter()
    result = work(folder)
    record = {"stage": name, "key": key, "seconds": round(time.perf_counter() - started, 1), "result": result}
    write_json(record_path, record)
    print(f"[{name}] done in {record['seconds']} s", flush=True)
    return record


def run_pipeline(config: PipelineConfig, out: Path) -> dict:
    """Every stage in order; returns the report dict (also written to ``<out>/report.json``)."""
    from .cam import evaluate_cam, write_cam_overlays
    from .train_encoder import train_encoder
    from .voc import VOCDataset
    from .world import generate_world

    if config.data is None:
        world = run_stage(out, "world", {"world": dump_config(config.world)},
                          lambda folder: {"path": str(generate_world(config.world, folder))})
        data, data_key = Path(world["result"]["path"]) / "images", world["key"]
    else:
        data, data_key = config.data, str(config.data.resolve())

    encoder = run_stage(
        out, "encoder", {"data": data_key, "encoder": dump_config(config.encoder)},
        lambda folder: {"history": read_json(train_encoder(data, folder, config.encoder, resume=True) /
                                             "model.json")["extra"]["encoder_training"]["history"]})
    model_dir = out / "encoder"

    def eval_cam(folder: Path) -> dict:
        result = evaluate_cam(model_dir, data, config.eval_cam, folder)
        val = VOCDataset(data, config.eval_cam.split)
        images = [data / "JPEGImages" / f"{image_id}.jpg" for image_id in val.ids[:4]]
        write_cam_overlays(model_dir, images, folder / "overlays")
        return result

    cam = run_stage(out, "eval_cam", {"encoder": encoder["key"], "eval_cam": dump_config(config.eval_cam)},
                    eval_cam)
    report = {
        "encoder_map": encoder["result"]["history"][-1]["map"],
        "cam_recall": cam["result"]["cam_recall"],
        "miou": {"cam_baseline": cam["result"]["miou"]},
        "tables": {"cam_baseline": cam["result"]["table"]},
    }
    write_json(out / "report.json", report)
    write_report_markdown(out, report, cam["result"]["table_text"])
    return report


def write_report_markdown(out: Path, report: dict, table_text: str) -> Path:
    """A human-readable report beside report.json, with the overlays inlined."""
    overlays = sorted((out / "eval_cam" / "overlays").glob("*.png"))
    lines = [
        "# wsvs report",
        "",
        f"- encoder val mAP: {report['encoder_map']:.3f}",
        f"- CAM baseline mIoU: {100 * report['miou']['cam_baseline']:.1f}",
        f"- CAM recall of object pixels: {100 * report['cam_recall']:.1f}%",
        "",
        "## Per-class IoU (paper's Table 2 layout)",
        "",
        "```",
        table_text,
        "```",
        "",
        "## CAM overlays",
        "",
        *(f"![{p.stem}]({p.relative_to(out)})" for p in overlays),
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_train(args: argparse.Namespace) -> int:
    config_file = preset_path(args.preset) if args.preset else args.config
    config = load_config(PipelineConfig, config_file, data=args.data)
    report = run_pipeline(config, args.out)
    print(f"report: {args.out / 'report.md'}  (json: {args.out / 'report.json'})")
    print(f"CAM baseline mIoU {100 * report['miou']['cam_baseline']:.1f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, preset, help_text in (
        ("train", None, "run every stage in order (cached, resumable)"),
        ("demo", "demo", "the whole pipeline on the generated synthetic world (what `make demo` runs)"),
    ):
        p = subparsers.add_parser(
            name, help=help_text,
            description=f"{help_text[0].upper()}{help_text[1:]}. Each stage writes <out>/<stage>/ and is skipped "
            "when its inputs are unchanged; a killed run resumes. Ends with <out>/report.md and report.json.")
        p.add_argument("--out", type=Path, required=True, help="run folder")
        if preset is None:
            group = p.add_mutually_exclusive_group(required=True)
            group.add_argument("--config", type=Path, help="pipeline YAML (see training/presets/)")
            group.add_argument("--preset", choices=PRESETS, help="a shipped preset")
            p.add_argument("--data", type=Path, default=None, help="VOC-layout image set (else the synthetic world)")
        p.set_defaults(func=run_train, preset=preset, config=None, data=None)
