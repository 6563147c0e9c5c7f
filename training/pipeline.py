"""`wsvs train` and `wsvs demo`: every stage in order, each cached and skipped when its inputs are unchanged.

Stages: world (only without ``data``) -> encoder (§3.1) -> eval_cam (the CAM baseline) -> crawl (§4) ->
segment_videos (§3.2) -> decoder (§3.3) -> adapt (§5.2.1) -> evaluate (§5, Table 1 and 2).

A stage's outputs live in ``<out>/<stage>/``; ``stage.json`` is written last and records a fingerprint of the
stage's config and of the stages it reads from, so a rerun skips finished stages and a killed stage resumes.
Without ``data`` the synthetic world is generated and its web videos are served on 127.0.0.1 for the crawl.
With ``davis`` (the davis preset) the world is made of real DAVIS-layout sequences (``training/davis_world.py``),
and three stages add the reference rows: video_truth (the clips' DAVIS masks and the J of the video masks),
upper_bound (the decoder trained on those masks) and zero_shot (the ImageNet CAM without training).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from wsvs.runtime.config import dump_config, load_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.executor import ExecutorConfig, add_executor_arguments, executor_from_args
from wsvs.runtime.io import is_hidden, read_json, write_json
from wsvs.runtime.video_masks import SegmentVideosConfig

from .adapt import AdaptConfig, describe_check
from .cam import EvalCamConfig
from .crawl import CrawlConfig
from .davis_world import DavisWorldConfig
from .demo_world import WorldConfig
from .evaluate import EvaluateConfig
from .train_decoder import TrainDecoderConfig
from .train_encoder import TrainEncoderConfig

STAGE_FILE = "stage.json"
# beside a stage's folder while it works, its inputs' fingerprint: a killed stage resumes only on the same inputs
STARTED_FILE = ".{stage}.started.json"
PRESETS = ("demo", "demo-confusable", "demo-loose", "paper", "davis")
OVERLAY_IMAGES = 4  # val images shown in the report, spread over the split
UPPER_BOUND_ROW = "decoder on DAVIS masks"


@dataclass
class PipelineConfig:
    """The whole pipeline. ``data`` is a VOC-layout image set; without it the synthetic world is generated, or
    with ``davis`` the world of real DAVIS-layout sequences.

    The crawl's classes default to all of the encoder's; with ``data`` its source is the config's (YouTube by
    default), without it the world's pages on 127.0.0.1.
    """

    data: Path | None = None
    world: WorldConfig = field(default_factory=WorldConfig)
    davis: DavisWorldConfig | None = None
    encoder: TrainEncoderConfig = field(default_factory=TrainEncoderConfig)
    eval_cam: EvalCamConfig = field(default_factory=EvalCamConfig)
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    segment_videos: SegmentVideosConfig = field(default_factory=SegmentVideosConfig)
    video_workers: int = 2  # videos at once in segment_videos (and, on a Ray cluster, the decoder's attention cache)
    decoder: TrainDecoderConfig = field(default_factory=TrainDecoderConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def preset_path(name: str) -> Path:
    """The YAML file of a named preset shipped with the package."""
    return Path(str(resources.files("wsvs.training") / "presets" / f"{name}.yaml"))


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(out: Path, name: str, inputs: dict[str, Any], work: Callable[[Path], dict[str, Any]]) -> dict:
    """Run ``work(folder)`` unless ``folder/stage.json`` records the same inputs; returns the stage record.

    A stage whose inputs changed starts from an empty folder; one that was killed resumes in place when its
    inputs are the same as when it started (a partial folder of other inputs, or of unknown ones, is emptied).
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
    marker = out / STARTED_FILE.format(stage=name)
    if folder.is_dir() and not (marker.is_file() and read_json(marker) == key):  # partial, of other inputs
        shutil.rmtree(folder)
    write_json(marker, key)
    print(f"[{name}] running", flush=True)
    started = time.perf_counter()
    result = work(folder)
    record = {"stage": name, "key": key, "seconds": round(time.perf_counter() - started, 1), "result": result}
    write_json(record_path, record)
    print(f"[{name}] done in {record['seconds']} s", flush=True)
    return record


@dataclass
class PipelineRun:
    """One run of the pipeline: its settings, where it writes, the image set, and each finished stage's record
    (``stage.json``: fingerprint ``key`` and ``result``), which the later stages read."""

    config: PipelineConfig
    out: Path
    data: Path  # VOC-layout image set: given, or the generated world's
    data_key: str  # what the image set's stages fingerprint: the world stage's key, or the given folder
    world: Path | None  # the generated or DAVIS world, whose web videos the crawl reads; None with given data
    shown: list[Path]  # val images whose overlays the report shows
    executor: ExecutorConfig  # where the per-video stages run; each stage sets its own workers
    records: dict[str, dict] = field(default_factory=dict)


def start_run(config: PipelineConfig, out: Path, executor: ExecutorConfig) -> PipelineRun:
    """The image set: ``config.data``, or the DAVIS or synthetic world made as the first stage."""
    from .davis_world import build_davis_world
    from .demo_world import generate_world
    from .voc import VOCDataset

    if config.davis is not None:
        world = run_stage(out, "world", {"davis": dump_config(config.davis)},
                          lambda folder: read_json(build_davis_world(config.davis, folder) / "world.json"))
        world_path = out / "world"
        data, data_key = world_path / "images", world["key"]
    elif config.data is None:
        world = run_stage(out, "world", {"world": dump_config(config.world)},
                          lambda folder: {"path": str(generate_world(config.world, folder))})
        world_path = Path(world["result"]["path"])
        data, data_key = world_path / "images", world["key"]
    else:
        world_path, data, data_key = None, config.data, str(config.data.resolve())
    val = VOCDataset(data, config.evaluate.split)
    spread = val.ids[::max(1, len(val) // OVERLAY_IMAGES)][:OVERLAY_IMAGES]  # real frames: several sequences
    shown = [data / "JPEGImages" / f"{image_id}.jpg" for image_id in spread]
    return PipelineRun(config, out, data, data_key, world_path, shown, executor)


def encoder_stage(run: PipelineRun) -> dict:
    """§3.1: f_enc from image-level labels."""
    from .train_encoder import train_encoder

    def work(folder: Path) -> dict:
        model = train_encoder(run.data, folder, run.config.encoder, resume=True)
        return {"history": read_json(model / "model.json")["extra"]["encoder_training"]["history"]}

    return run_stage(run.out, "encoder", {"data": run.data_key, "encoder": dump_config(run.config.encoder)}, work)


def eval_cam_stage(run: PipelineRun) -> dict:
    """The CAM baseline, also at one scale: how much of an object the classifier's own evidence (Eq. 2) covers,
    before §3.2's max over scales widens it."""
    from .cam import evaluate_cam, write_cam_overlays

    encoder_dir, single_scale = run.out / "encoder", replace(run.config.eval_cam, scales=(1.0,))

    def work(folder: Path) -> dict:
        result = evaluate_cam(encoder_dir, run.data, run.config.eval_cam, folder)
        single = evaluate_cam(encoder_dir, run.data, single_scale)
        result["single_scale"] = {"miou": single["miou"], "cam_recall": single["cam_recall"]}
        write_cam_overlays(encoder_dir, run.shown, folder / "overlays")
        return result

    return run_stage(run.out, "eval_cam", {"encoder": run.records["encoder"]["key"],
                                           "eval_cam": dump_config(run.config.eval_cam),
                                           "single_scale": dump_config(single_scale)}, work)


def crawl_stage(run: PipelineRun) -> dict:
    """§4: the configured source, or the world's videos served as web pages on 127.0.0.1."""
    from .cam import FrameAttention
    from .crawl import NETWORK_SETTINGS, crawl, load_scorer
    from .demo_world.loopback_site import LoopbackServer, serve_world_videos

    def work(folder: Path) -> dict:
        class_names = FrameAttention.load(run.out / "encoder").class_names
        settings = replace(run.config.crawl, classes=run.config.crawl.classes or tuple(class_names),
                           model=run.out / "encoder", out=folder)
        executor = replace(run.executor, workers=settings.workers)
        load = functools.partial(load_scorer, settings.model, executor.threads_per_task(), executor.device())
        if run.world is None:
            return {"summary": crawl(settings, load, class_names, executor)}
        with LoopbackServer() as server:
            pages = serve_world_videos(server, run.world / "web")
            write_json(folder / "pages.json", pages)
            # Our own server: no pacing.
            settings = replace(settings, source="pages", pages=folder / "pages.json", sleep_requests_s=0.0,
                               min_sleep_download_s=0.0, max_sleep_download_s=0.0)
            return {"summary": crawl(settings, load, class_names, executor)}

    return run_stage(run.out, "crawl", {"encoder": run.records["encoder"]["key"], "world": run.data_key,
                                        "crawl": {k: v for k, v in dump_config(run.config.crawl).items()
                                                  if k not in NETWORK_SETTINGS}}, work)


def segment_videos_stage(run: PipelineRun) -> dict:
    """§3.2: masks of the crawled clips."""
    from .segment_videos import segment_videos

    config = run.config
    return run_stage(
        run.out, "segment_videos", {"crawl": run.records["crawl"]["key"],
                                    "config": dump_config(config.segment_videos)},
        lambda folder: segment_videos(run.out / "crawl" / "clips", folder, config.segment_videos,
                                      run.out / "encoder", replace(run.executor, workers=config.video_workers)))


def decoder_stage(run: PipelineRun) -> dict:
    """§3.3: the decoder on the video masks."""
    from .train_decoder import train_decoder

    def work(folder: Path) -> dict:
        # On this machine torch already spreads a video's frames over the cores: one process; on a cluster, many.
        workers = run.config.video_workers if run.executor.kind == "ray" else 1
        executor = replace(run.executor, workers=workers)
        _, counts = train_decoder(run.out / "encoder", run.out / "crawl" / "clips", run.out / "segment_videos",
                                  folder, run.config.decoder, True, executor)
        return {"frames": counts}

    return run_stage(run.out, "decoder", {"masks": run.records["segment_videos"]["key"],
                                          "decoder": dump_config(run.config.decoder)}, work)


def adapt_stage(run: PipelineRun) -> dict:
    """§5.2.1: domain adaptation to the still images, judged on held-out ones."""
    from .adapt import adapt

    def work(folder: Path) -> dict:
        _, counts = adapt(run.out / "decoder", run.data, folder, run.config.adapt, resume=True)
        check = counts.pop("check")
        print(f"[adapt] {describe_check(check, folder)}", flush=True)
        return {"pairs": counts, "check": check}

    return run_stage(run.out, "adapt", {"decoder": run.records["decoder"]["key"], "data": run.data_key,
                                        "adapt": dump_config(run.config.adapt)}, work)


def evaluate_stage(run: PipelineRun) -> dict:
    """§5: the decoder and the adapted model on the val split, with overlays."""
    from wsvs.runtime.backends import EAGER
    from wsvs.runtime.image_segmenter import ImageSegmenter, segment_files

    from .evaluate import evaluate_model

    def work(folder: Path) -> dict:
        results = {}
        for name in ("decoder", "adapt"):
            results[name] = evaluate_model(run.out / name, run.data, run.config.evaluate)
            skipped = segment_files(ImageSegmenter(run.out / name, EAGER), run.shown, folder / "overlays" / name).failed
            if skipped:
                raise skipped[0]
        return results

    return run_stage(run.out, "evaluate", {"decoder": run.records["decoder"]["key"],
                                           "adapt": run.records["adapt"]["key"],
                                           "evaluate": dump_config(run.config.evaluate)}, work)


def video_truth_stage(run: PipelineRun) -> dict:
    """The DAVIS masks of the segmented clips' frames, and the J of the video masks against them (§3.2)."""
    from .davis_world import write_clip_truth
    from .eval_video import evaluate_videos

    def work(folder: Path) -> dict:
        frames = write_clip_truth(run.world, run.out / "crawl", run.out / "segment_videos", folder)
        return {"frames": frames, "j": evaluate_videos(run.out / "segment_videos", folder)}

    return run_stage(run.out, "video_truth", {"masks": run.records["segment_videos"]["key"]}, work)


def upper_bound_stage(run: PipelineRun) -> dict:
    """The decoder trained on the clips' DAVIS masks in place of the video masks: what perfect masks would give."""
    from .evaluate import evaluate_model
    from .train_decoder import train_decoder

    def work(folder: Path) -> dict:
        # the clips' frames the decoder was trained on keep their attention: only the rest is computed
        _, counts = train_decoder(run.out / "encoder", run.out / "crawl" / "clips", run.out / "video_truth", folder,
                                  run.config.decoder, True, replace(run.executor, workers=1), run.out / "decoder")
        result = evaluate_model(folder, run.data, run.config.evaluate)
        (row,) = result["table"]["rows"].values()
        result["table"]["rows"] = {UPPER_BOUND_ROW: row}
        return {"frames": counts, "evaluate": result}

    return run_stage(run.out, "upper_bound", {"truth": run.records["video_truth"]["key"],
                                              "decoder": dump_config(run.config.decoder),
                                              "evaluate": dump_config(run.config.evaluate)}, work)


def zero_shot_stage(run: PipelineRun) -> dict:
    """The zero-shot ImageNet CAM: the pretrained classifier's own CAM, thresholded as the CAM baseline is."""
    from .imagenet_classes import evaluate_imagenet_cam

    cam = run.config.eval_cam
    class_threshold = run.config.encoder.class_threshold if cam.class_threshold is None else cam.class_threshold
    return run_stage(run.out, "zero_shot", {"data": run.data_key, "split": run.config.evaluate.split,
                                            "thresholds": [class_threshold, cam.cam_threshold]},
                     lambda folder: evaluate_imagenet_cam(run.data, run.config.evaluate.split, class_threshold,
                                                          cam.cam_threshold))


# The stages after the image set, in order: each reads the records of the ones before it.
STAGES: tuple[tuple[str, Callable[[PipelineRun], dict]], ...] = (
    ("encoder", encoder_stage), ("eval_cam", eval_cam_stage), ("crawl", crawl_stage),
    ("segment_videos", segment_videos_stage), ("decoder", decoder_stage), ("adapt", adapt_stage),
    ("evaluate", evaluate_stage))
# ... and the reference rows of the real-data world (the davis preset).
REFERENCE_STAGES: tuple[tuple[str, Callable[[PipelineRun], dict]], ...] = (
    ("video_truth", video_truth_stage), ("upper_bound", upper_bound_stage), ("zero_shot", zero_shot_stage))


def run_pipeline(config: PipelineConfig, out: Path, executor: ExecutorConfig | None = None) -> dict:
    """Every stage in order; returns the report dict (also written to ``<out>/report.json``). ``executor``:
    where the per-video stages run (crawl, segment_videos, the decoder's attention cache); default local."""
    run = start_run(config, out, executor or ExecutorConfig())
    for name, stage in STAGES + (REFERENCE_STAGES if config.davis is not None else ()):
        run.records[name] = stage(run)
    report = pipeline_report({name: record["result"] for name, record in run.records.items()})
    write_json(out / "report.json", report)
    write_report_markdown(out, report)
    return report


def pipeline_report(results: dict[str, dict]) -> dict:
    """The report's numbers from each stage's result: Table 1 in miniature and what led to it."""
    cam, evaluated = results["eval_cam"], results["evaluate"]
    report = {
        "encoder_map": results["encoder"]["history"][-1]["map"],
        "cam_recall": cam["cam_recall"],
        "cam_single_scale": cam["single_scale"],
        "miou": {"cam_baseline": cam["miou"], "decoder": evaluated["decoder"]["miou"],
                 "adapted": evaluated["adapt"]["miou"]},
        "tables": {"cam_baseline": cam["table"], "decoder": evaluated["decoder"]["table"],
                   "adapted": evaluated["adapt"]["table"]},
        "crawl": results["crawl"]["summary"],
        "segment_videos": {k: v for k, v in results["segment_videos"].items() if k != "failures"},
        "decoder_frames": results["decoder"]["frames"],
        "adaptation_pairs": results["adapt"]["pairs"],
        "adaptation": results["adapt"]["check"],
    }
    if "zero_shot" in results:  # the real-data world's reference rows and the J of its video masks
        upper = results["upper_bound"]["evaluate"]
        report["miou"] |= {"zero_shot": results["zero_shot"]["miou"], "upper_bound": upper["miou"]}
        report["tables"] |= {"zero_shot": results["zero_shot"]["table"], "upper_bound": upper["table"]}
        report["video_j"] = results["video_truth"]["j"]
    return report


def write_report_markdown(out: Path, report: dict) -> Path:
    """A human-readable report beside report.json: Table 1 in miniature, per-class IoU, overlays."""
    from wsvs.runtime.metrics import format_iou_table

    names = report["tables"]["cam_baseline"]["classes"][1:]
    rows = {}
    for key in report["tables"]:
        table = report["tables"][key]
        rows.update({method: [float("nan") if v is None else v for v in row["per_class"].values()]
                     for method, row in table["rows"].items()})
    miou = report["miou"]
    crawl_rows = [f"| {c} | {r['listed']} | {r['passed_thumbnail']} | {r['downloaded']} | {r['kept']} | "
                  f"{r['keyframes']} | {r['clip_frames']} |" for c, r in report["crawl"].items()]

    def images(folder: Path) -> list[str]:
        return [f"![{p.stem}]({p.relative_to(out)})" for p in sorted(folder.glob("*")) if p.suffix in (".png", ".jpg")
                and not is_hidden(p) and not p.stem.endswith("_cam_labels")]

    lines = [
        "# wsvs report",
        "",
        f"- encoder val mAP: {report['encoder_map']:.3f}",
        f"- CAM recall of object pixels (share of object pixels whose attention passes the CAM threshold): "
        f"{100 * report['cam_recall']:.1f}% with the multi-scale attention the baseline uses, "
        f"{100 * report['cam_single_scale']['cam_recall']:.1f}% with the CAM of Eq. 2 at one scale "
        f"(whose baseline scores {100 * report['cam_single_scale']['miou']:.1f} mIoU)",
        "",
        "## Table 1 in miniature (val mIoU)",
        "",
        "| method | mIoU |",
        "|---|---|",
        f"| CAM baseline (threshold the attention) | {100 * miou['cam_baseline']:.1f} |",
        f"| decoder trained on video masks | {100 * miou['decoder']:.1f} |",
        f"| + domain adaptation | {100 * miou['adapted']:.1f} |",
        *([f"| zero-shot ImageNet CAM (no training) | {100 * miou['zero_shot']:.1f} |",
           f"| {UPPER_BOUND_ROW} (upper bound) | {100 * miou['upper_bound']:.1f} |"] if "zero_shot" in miou else []),
        "",
        *video_j_lines(report.get("video_j")),
        f"Domain adaptation, judged on {report['adaptation']['images']} held-out training images (image-level "
        f"labels only): {describe_check(report['adaptation'], Path('adapt'))}.",
        "",
        "## Per-class IoU (paper's Table 2 layout)",
        "",
        "```",
        format_iou_table(rows, names),
        "```",
        "",
        "## Crawl (§4)",
        "",
        "| class | listed | passed thumbnail | downloaded | kept | key-frames | clip frames |",
        "|---|---|---|---|---|---|---|",
        *crawl_rows,
        "",
        "## CAM overlays",
        "",
        *images(out / "eval_cam" / "overlays"),
        "",
        "## Segmentation overlays: decoder, then + domain adaptation",
        "",
        *images(out / "evaluate" / "overlays" / "decoder"),
        *images(out / "evaluate" / "overlays" / "adapt"),
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def video_j_lines(j: dict | None) -> list[str]:
    """The J of the video masks against the clips' DAVIS masks, per clip (real-data world only)."""
    if j is None:
        return []
    return ["## Video masks against the DAVIS masks of their clips (§3.2, J)", "",
            "| clip | class | frames | J |", "|---|---|---|---|",
            *(f"| {clip} | {row['class']} | {row['frames']} | {row['iou']:.3f} |"
              for clip, row in j["per_video"].items()),
            f"| mean | | | {j['mean_iou']:.3f} |", ""]


def seeded(config: PipelineConfig, seed: int) -> PipelineConfig:
    """``config`` with every random stream seeded by ``seed``: the world (when generated) and each training."""
    return replace(config, world=replace(config.world, seed=seed), encoder=replace(config.encoder, seed=seed),
                   decoder=replace(config.decoder, seed=seed), adapt=replace(config.adapt, seed=seed))


def run_seeds(config: PipelineConfig, seeds: list[int], out: Path, executor: ExecutorConfig | None = None) -> dict:
    """The pipeline once per seed in ``<out>/seed-<s>/``, then Table 1 over the seeds: each row's mean, min and
    max and each seed's margins, in ``<out>/seeds.md`` and ``<out>/seeds.json``."""
    runs = {}
    for seed in seeds:
        print(f"=== seed {seed} ===", flush=True)
        runs[seed] = run_pipeline(seeded(config, seed), out / f"seed-{seed}", executor)
    summary = seeds_summary(runs)
    write_json(out / "seeds.json", summary)
    (out / "seeds.md").write_text(seeds_markdown(summary))
    return summary


def seeds_summary(reports: dict[int, dict]) -> dict:
    """Per-seed mIoU (points), margins, encoder mAP and one-scale CAM recall (%) from each seed's report, and
    the mean, min and max of each over the seeds."""
    per_seed = {}
    for seed, report in reports.items():
        miou = {key: 100 * value for key, value in report["miou"].items()}
        if "video_j" in report:
            miou["video_j"] = report["video_j"]["mean_iou"]
        per_seed[str(seed)] = {**miou, "decoder_margin": miou["decoder"] - miou["cam_baseline"],
                               "adaptation_gain": miou["adapted"] - miou["decoder"],
                               "encoder_map": report["encoder_map"],
                               "cam_recall_one_scale": 100 * report["cam_single_scale"]["cam_recall"],
                               "adaptation_accepted": report["adaptation"]["accepted"]}
    stats = {key: {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
             for key, _, _ in seed_rows(per_seed) for values in [[row[key] for row in per_seed.values()]]}
    order_holds = {seed: row["cam_baseline"] < row["decoder"] <= row["adapted"] for seed, row in per_seed.items()}
    return {"seeds": per_seed, "stats": stats, "order_holds": order_holds}


# The seeds table's numeric rows: key, name, format of the mean, min and max (seed cells of margins add a sign).
SEED_ROWS = (("cam_baseline", "CAM baseline", ".1f"), ("decoder", "decoder on video masks", ".1f"),
             ("adapted", "+ domain adaptation", ".1f"), ("decoder_margin", "decoder - CAM", ".1f"),
             ("adaptation_gain", "adapted - decoder", ".1f"), ("encoder_map", "encoder val mAP", ".3f"),
             ("cam_recall_one_scale", "CAM recall of object pixels, one scale (%)", ".1f"))
MARGINS = ("decoder_margin", "adaptation_gain")
# Rows of the real-data world only.
REFERENCE_SEED_ROWS = (("zero_shot", "zero-shot ImageNet CAM (no training)", ".1f"),
                       ("upper_bound", f"{UPPER_BOUND_ROW} (upper bound)", ".1f"),
                       ("video_j", "video masks J (§3.2)", ".3f"))


def seed_rows(per_seed: dict[str, dict]) -> tuple[tuple[str, str, str], ...]:
    """The seeds table's rows: SEED_ROWS, and the reference rows when every seed has them."""
    reference = all("zero_shot" in row for row in per_seed.values())
    return SEED_ROWS + (REFERENCE_SEED_ROWS if reference else ())


def seeds_markdown(summary: dict) -> str:
    stats, per_seed = summary["stats"], summary["seeds"]
    seeds = list(per_seed)
    lines = ["# Table 1 in miniature over seeds (val mIoU, points)", "",
             "| row | mean | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|---|" + "---|" * len(seeds)]
    for key, name, form in seed_rows(per_seed):
        cell = ("+" if key in MARGINS else "") + form
        lines.append(f"| {name} | " + " | ".join(f"{stats[key][x]:{form}}" for x in ("mean", "min", "max")) + " | "
                     + " | ".join(f"{per_seed[s][key]:{cell}}" for s in seeds) + " |")
    lines.append("| adaptation accepted | | | | " + " | ".join("yes" if per_seed[s]["adaptation_accepted"] else "no"
                                                            for s in seeds) + " |")
    held = [s for s, ok in summary["order_holds"].items() if ok]
    lines += ["", f"CAM baseline < decoder <= + adaptation holds in {len(held)} of {len(seeds)} seeds.", ""]
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    config_file = preset_path(args.preset) if args.preset else args.config
    config = load_config(PipelineConfig, config_file)
    if config.davis is not None:  # --data is the DAVIS training folder; paths are fingerprinted resolved
        given = {"train": args.data, "eval": args.eval_data, "classes_table": args.classes_table}
        config = replace(config, davis=replace(config.davis, **{key: path.resolve() for key, path in given.items()
                                                                if path is not None}))
    elif args.eval_data or args.classes_table:
        raise InputError(None, "--eval-data and --classes-table belong to a DAVIS world (--preset davis, or a config "
                         "with a davis: section)")
    else:
        config = replace(config, data=args.data or config.data)
    executor = executor_from_args(args, workers=1)  # each per-video stage sets its own workers
    if args.seeds:
        summary = run_seeds(config, args.seeds, args.out, executor)
        print(seeds_markdown(summary))
        print(f"seeds table: {args.out / 'seeds.md'}  (json: {args.out / 'seeds.json'})")
        return 0
    report = run_pipeline(config, args.out, executor)
    miou = report["miou"]
    print(f"mIoU: CAM baseline {100 * miou['cam_baseline']:.1f}, decoder {100 * miou['decoder']:.1f}, "
          f"+ adaptation {100 * miou['adapted']:.1f}")
    print(f"report: {args.out / 'report.md'}  (json: {args.out / 'report.json'})")
    return 0


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0, got {text!r}")
    return seeds


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
        p.add_argument("--seeds", type=seed_list, default=None, metavar="S,S,...",
                       help="run once per seed (world and every training seeded by it) into <out>/seed-<s>/, then "
                       "write Table 1 over the seeds (mean, min, max, per-seed margins) to <out>/seeds.md")
        if preset is None:
            group = p.add_mutually_exclusive_group(required=True)
            group.add_argument("--config", type=Path, help="pipeline YAML (see training/presets/)")
            group.add_argument("--preset", choices=PRESETS, help="a shipped preset")
            p.add_argument("--data", type=Path, default=None, help="VOC-layout image set (else the synthetic "
                           "world); with --preset davis, the DAVIS-layout folder of the training sequences")
            p.add_argument("--eval-data", type=Path, default=None, metavar="DIR",
                           help="--preset davis: DAVIS-layout folder of the evaluation sequences")
            p.add_argument("--classes-table", type=Path, default=None, metavar="TSV",
                           help="--preset davis: each sequence's VOC classes (davis2016_classes.tsv's format)")
        add_executor_arguments(p)
        p.set_defaults(func=run_train, preset=preset, config=None, data=None, eval_data=None, classes_table=None)
