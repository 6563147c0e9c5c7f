"""`wsvs <command> ...`: the package's one command line (console script ``wsvs``).

It lives in the torch-free runtime, which every install has. The commands come from the modules listed in
``COMMANDS``: each defines ``register(subparsers)``, which adds its subparser and sets ``func`` to a function
taking the parsed arguments and returning an exit code. Those modules are imported when the parser is built and
import torch only inside ``func``, so ``wsvs --help`` and parsing never import torch; a module that cannot be
imported gets a placeholder command that says so in one line (exit 2), and a command that needs PyTorch where it
is not installed says so in one line (exit 2) instead of a traceback. A command that stops early but keeps its
finished work (IncompleteError: a crawl blocked by a rate limit) says why in one line with the command that
resumes it, and exits 3. ``wsvs segment`` and ``wsvs bench`` on exported graphs need no torch.

Vocabulary shared by every command: ``--model`` is the input model (a checkpoint folder, or an exported graph
file where the command runs graphs), ``--out`` the output, ``--batch`` an inference batch size (a comma list
where several are timed), ``--batch-size`` a training batch size, ``--input-size`` the side of the square network
input, ``--long-side`` the side images are resized to (longer side, aspect kept), and backends are
``auto``, ``pytorch-eager``, ``tensorrt``, ``ort-cuda`` and ``ort-cpu``.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from wsvs.runtime import __version__
from wsvs.runtime.backends import importable
from wsvs.runtime.errors import IncompleteError, InputError

# (module, the commands it registers), in pipeline order; `wsvs --help` lists them in this order.
COMMANDS: list[tuple[str, tuple[str, ...]]] = [
    ("wsvs.training.demo_world.generate", ("world",)),
    ("wsvs.training.train_encoder", ("train-encoder",)),
    ("wsvs.training.cam", ("cam", "eval-cam")),
    ("wsvs.training.crawl", ("crawl",)),
    ("wsvs.training.segment_videos", ("segment-videos",)),
    ("wsvs.training.eval_video", ("eval-video",)),
    ("wsvs.training.train_decoder", ("train-decoder",)),
    ("wsvs.training.adapt", ("adapt",)),
    ("wsvs.training.evaluate", ("evaluate",)),
    ("wsvs.training.pipeline", ("train", "demo")),
    ("wsvs.export.cli", ("export",)),
    ("wsvs.runtime.segment", ("segment",)),
    ("wsvs.runtime.bench", ("bench",)),
    ("wsvs.runtime.doctor", ("doctor",)),
]

# Commands that always run the PyTorch model: refused up front, in one line, where torch is not installed.
NEEDS_TORCH = {"train-encoder", "cam", "eval-cam", "crawl", "train-decoder", "adapt", "evaluate", "train", "demo",
               "export"}
# Exit code of a command that stopped early but kept its work (IncompleteError): rerun it to resume.
EXIT_INCOMPLETE = 3
# Packages of the `train` extra: a command that reaches one of them where it is missing fails in one line.
TRAIN_EXTRA = {"torch", "safetensors", "skimage", "scipy", "yt_dlp", "onnx", "matplotlib", "torchvision"}
INSTALL_HINT = "install the training extra: pip install 'wsvs[train]'"


def _unavailable(parser_name: str, reason: str):
    def refuse(args: argparse.Namespace) -> int:
        print(f"wsvs {parser_name}: error: not available here ({reason}); {INSTALL_HINT}", file=sys.stderr)
        return 2

    return refuse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsvs",
        description="Weakly supervised semantic segmentation from web-crawled videos "
        "(Hong et al., CVPR 2017): train, segment videos, evaluate, export, segment and benchmark. Inputs are "
        "--model, outputs --out; --batch is an inference batch (a comma list where several are timed), "
        "--batch-size a training batch; backends: auto, pytorch-eager, tensorrt, ort-cuda, ort-cpu.")
    parser.add_argument("--version", action="version", version=f"wsvs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name, names in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            reason = f"{module_name} cannot be imported: {exc}"
            for name in names:
                stub = subparsers.add_parser(name, help=f"(not available: {exc})", add_help=False)
                stub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
                stub.set_defaults(func=_unavailable(name, reason))
            continue
        module.register(subparsers)
    return parser


def command_name(parser: argparse.ArgumentParser, given: str) -> str:
    """The canonical name of a command given by an alias (``eval`` -> ``evaluate``)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen = action.choices[given]
    return next((name for name, sub in action.choices.items() if sub is chosen), given)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = command_name(parser, args.command)
    if command in NEEDS_TORCH and not importable("torch"):
        print(f"wsvs {command}: error: needs PyTorch, which is not installed; {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"wsvs {command}: error: {exc}", file=sys.stderr)
        return 2
    except IncompleteError as exc:
        rerun = shlex.join(["wsvs", *(sys.argv[1:] if argv is None else argv)])
        print(f"wsvs {command}: incomplete: {exc}; finished work is kept, resume with: {rerun}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        print(f"wsvs {command}: error: needs {exc.name}, which is not installed; {INSTALL_HINT}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wsvs {command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
