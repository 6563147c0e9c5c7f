"""`wsvs <stage> ...`: one subcommand per pipeline stage.

Each stage module defines ``register(subparsers)``, which adds its subparser and sets ``func`` to a
function taking the parsed arguments and returning an exit code. Heavy imports (torch) happen inside
those functions so that ``wsvs --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from wsvs.runtime import __version__
from wsvs.runtime.errors import InputError

# Stage modules under wsvs.training, in pipeline order.
STAGES = [
    "demo_world.generate",
    "train_encoder",
    "cam",
    "crawl",
    "segment_videos",
    "eval_video",
    "train_decoder",
    "segment",
    "adapt",
    "evaluate",
    "bench",
    "pipeline",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsvs",
        description="Weakly supervised semantic segmentation from web-crawled videos "
        "(Hong et al., CVPR 2017): train, segment videos, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"wsvs {__version__}")
    subparsers = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name in STAGES:
        importlib.import_module(f"wsvs.training.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"wsvs {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wsvs {args.stage}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
