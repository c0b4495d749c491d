"""`fewstep <subcommand>`: one argparse front end; each subcommand lives in `fewstep/commands/`.

A command module exposes `register(subparsers) -> argparse.ArgumentParser` and
`run(args) -> int`. Heavy imports (diffusers, torchvision, ...) stay inside `run` so that
`fewstep --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> module; a module that fails to import is reported, not hidden.
COMMANDS: dict[str, str] = {
    "demo": "fewstep.commands.demo",
    "solvers": "fewstep.commands.solvers",
    "sample": "fewstep.commands.sample",
    "boss": "fewstep.commands.boss",
    "fit-sampler": "fewstep.commands.fit_sampler",
    "fid": "fewstep.commands.fid",
    "train": "fewstep.commands.train",
    "lsd": "fewstep.commands.lsd",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="fewstep",
        description="Few-step sampling, distillation and scoring for diffusion and flow models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = module.register(sub)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as error:  # user errors: one clear line
        print(f"fewstep {args.command}: error: {error}", file=sys.stderr)
        return 2
