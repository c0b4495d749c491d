"""`fewstep <subcommand>`: one argparse front end; each subcommand lives in `fewstep/commands/`.

A command module exposes `register(subparsers) -> argparse.ArgumentParser` and
`run(args) -> int`. Heavy imports (diffusers, torchvision, ...) stay inside `run` so that
`fewstep --help` is quick.

User errors (bad values, missing or unreadable files, corrupt checkpoints, YAML syntax) are
printed as one line `fewstep COMMAND: error: ...` with exit code 2; `--traceback` or the
environment variable FEWSTEP_TRACEBACK=1 shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from typing import Sequence

TRACEBACK_VARIABLE = "FEWSTEP_TRACEBACK"

# name -> module; a module that fails to import is reported, not hidden.
COMMANDS: dict[str, str] = {
    "demo": "fewstep.commands.demo",
    "solvers": "fewstep.commands.solvers",
    "sample": "fewstep.commands.sample",
    "boss": "fewstep.commands.boss",
    "fit-sampler": "fewstep.commands.fit_sampler",
    "pairs": "fewstep.commands.pairs",
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
    parser.add_argument("--traceback", action="store_true",
                        help=f"show the full traceback of an error (or set {TRACEBACK_VARIABLE}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = module.register(sub)
        command_parser.set_defaults(_run=module.run)
    return parser


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a bad file (shown as one line), not a bug in fewstep."""
    types: list[type[BaseException]] = [ValueError, OSError, KeyError, FloatingPointError]
    for module_name, name in (("yaml", "YAMLError"), ("safetensors", "SafetensorError")):
        try:
            types.append(getattr(importlib.import_module(module_name), name))
        except (ImportError, AttributeError):  # optional at this level; the command would fail first
            pass
    return tuple(types)


def describe_error(error: BaseException) -> str:
    """One line: the message, or the exception's name when it has none; KeyError without quotes."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    message = " ".join(str(message).split())
    return message or type(error).__name__


@contextlib.contextmanager
def short_fewstep_warnings(command: str):
    """Print warnings raised by fewstep's own code as `fewstep COMMAND: warning: ...` (others unchanged)."""
    package = os.path.dirname(os.path.abspath(__file__))
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if os.path.abspath(filename).startswith(package + os.sep):
            print(f"fewstep {command}: warning: {message}", file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    show_traceback = args.traceback or os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0")
    try:
        with short_fewstep_warnings(args.command):
            return int(args._run(args) or 0)
    except user_error_types() as error:
        if show_traceback:
            raise
        print(f"fewstep {args.command}: error: {describe_error(error)}", file=sys.stderr)
        print(f"(run with --traceback or {TRACEBACK_VARIABLE}=1 for the full traceback)", file=sys.stderr)
        return 2
