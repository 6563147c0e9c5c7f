"""The `wsvs` command line: one vocabulary, torch-free parsing, `wsvs export` and `wsvs-export` one parser."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from wsvs.export import cli as export_cli
from wsvs.runtime.cli import build_parser, main


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help", "--version")}


def test_help_and_parsing_import_no_torch_and_torch_commands_fail_in_one_line():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from wsvs.runtime.cli import build_parser, main\n"
            "text = build_parser().format_help()\n"
            "assert 'export' in text and 'evaluate' in text, text\n"
            "assert not [k for k, v in sys.modules.items() if v is not None and k.split('.')[0] == 'torch']\n"
            "sys.exit(main(['train-encoder', '--data', 'd', '--out', 'o']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("wsvs train-encoder: error: needs PyTorch")


def test_export_subcommand_and_console_script_share_one_parser():
    assert option_strings(subcommands(build_parser())["export"]) == option_strings(export_cli.build_parser())
    args = export_cli.build_parser().parse_args(["--model", "ckpt", "--out", "m.onnx", "--out-engine", "m.engine",
                                                 "--min-shapes", "1x3x64x64", "--timing-cache", "t.cache"])
    assert (export_cli.model_argument(args), args.out, args.out_engine) == (Path("ckpt"), Path("m.onnx"),
                                                                            Path("m.engine"))
    assert (args.min_shapes, args.timing_cache) == ("1x3x64x64", Path("t.cache"))
    # The documented trtexec spellings and the older positional model and --engine keep working.
    old = build_parser().parse_args(["export", "ckpt", "--engine", "m.engine", "--minShapes", "1x3x64x64",
                                     "--optShapes", "1x3x96x96", "--maxShapes", "2x3x128x128",
                                     "--timingCacheFile", "t.cache"])
    assert export_cli.model_argument(old) == Path("ckpt") and old.out_engine == Path("m.engine")
    assert (old.min_shapes, old.opt_shapes, old.max_shapes) == ("1x3x64x64", "1x3x96x96", "2x3x128x128")
    assert old.timing_cache == Path("t.cache")


def test_export_needs_one_model(capsys):
    assert main(["export", "--out", "m.onnx"]) == 2
    assert "--model" in capsys.readouterr().err
    assert export_cli.main(["a", "--model", "b"]) == 2
    assert capsys.readouterr().err.startswith("wsvs-export: error: two models")


def test_one_vocabulary():
    commands = subcommands(build_parser())
    assert commands["eval"] is commands["evaluate"]
    for name, parser in commands.items():
        flags = option_strings(parser)
        # export takes --onnx again (a hidden alias of --out), the spelling it was known by
        retired = {"--engine-path", "--batch_size", "--input_size"} | ({"--onnx"} if name != "export" else set())
        assert not retired & flags, name
        documented = {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        camel = {f for f in documented if any(c.isupper() for c in f)}
        assert camel <= {"--minShapes", "--optShapes", "--maxShapes", "--timingCacheFile"}, (name, camel)
    segment = build_parser().parse_args(["segment", "a.png", "--model", "m", "--out", "o", "--backend", "pytorch"])
    assert segment.backend == "pytorch-eager" and segment.batch == 8
    bench = build_parser().parse_args(["bench", "--model", "m", "--batch", "1,8", "--input-size", "320"])
    assert bench.batch == (1, 8) and bench.size == 320
    assert build_parser().parse_args(["bench", "--model", "m", "--size", "64"]).size == 64
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "a.png", "--onnx", "m.onnx", "--out", "o"])
    assert str(build_parser().parse_args(["export", "--model", "m.pt", "--onnx", "x.onnx"]).out) == "x.onnx"
