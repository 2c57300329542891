"""The `pyquant` command. Each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module providing add_parser(subparsers) and run(args))
SUBCOMMANDS = [
    ("demo", "pyquant.demo"),
    ("distill", "pyquant.distill.cli"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyquant", description="Data-free quantization for PyTorch")
    parser.add_argument("--version", action="store_true", help="print version and build info")
    sub = parser.add_subparsers(dest="command")
    for _, module_name in SUBCOMMANDS:
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import pyquant

        print(pyquant.__version__, pyquant.build_info())
        return 0
    if args.command is None:
        # The built-in default job.
        args = parser.parse_args(["demo"] + (argv or []))
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
